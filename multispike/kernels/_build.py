"""Lazy build and loading of the C++/OpenMP CPU kernels.

The kernels are plain C++17 (no PyTorch or Python headers), compiled on first use with the system C++
compiler into a shared library that is loaded with :mod:`ctypes`. This needs only ``g++`` (or ``c++``/
``clang++``; ``$CXX`` wins) - no ``ninja``, no Python development headers - and takes about 30 s on 2 cores
(the IF/LIF backward's many specialisations; compiled in parallel units, see :func:`_try_build`).

The sources are the files of ``multispike/kernels/csrc`` (shipped as package data): every ``.cpp`` there is
compiled, with the shared header ``ms_common.h``, into one library (one main translation unit, plus the extra units a
source declares). It is cached per user in
``$MULTISPIKE_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/multispike/kernels`` or ``~/.cache/multispike/kernels``)
under a name that hashes every source file (headers included, with their names), the compiler, the flags and the CPU
features (so a cache shared between different machines never loads a binary built for another CPU).

Loading a shared library runs its code, so the cache is treated as part of the trusted code base:

* **Private folders.** A cache folder is created ``0700``; before anything in it is loaded, it must be a real
  folder owned by this user and not writable by group or others (the configured cache is checked where its path
  resolves to; the temp fallback must not be a symlink). If the main cache fails that check (or cannot
  be written), the fallback ``<tmp>/multispike-kernels-<uid>`` is checked the same way (and must not be readable
  by others either); if that fails too - e.g. another account created it first - a fresh private
  ``mkdtemp`` folder is used for this process. A refused folder is named in a :class:`KernelCacheWarning`.
* **Verified libraries.** Each library is written atomically (compile to a temporary file, then rename) with a
  sidecar ``<name>.so.sha256`` (JSON: size and sha256), written after it. A library whose size or hash does not
  match its sidecar, which is not a regular file owned by this user, or which fails to load, is never mapped
  (a truncated library would crash the process with SIGBUS): it is rebuilt once with the same flags and
  replaced, with a :class:`KernelCacheWarning`.
* **Remembered failures.** A compiler error leaves ``<name>.failed`` (the error text) for that flag set, a compiler
  that exceeds its time limit (``$MULTISPIKE_CXX_TIMEOUT`` seconds, default 180) leaves ``<compiler key>.timeout``,
  so later processes skip straight to the next flag set or the reference implementation instead of compiling
  again. Delete the marker (or set ``MULTISPIKE_KERNEL_RETRY=1``) to try again, e.g. after fixing the compiler.

If no compiler works, one :class:`CppBuildWarning` is issued and :func:`load_library` returns ``None``; the
kernels then fall back to the reference functions. ``MULTISPIKE_DISABLE_CPP=1`` disables the CPU kernels on
purpose.

This module is slightly over the package's ~450-line guide on purpose: the cache checks, the compiler runs and the
loading share one lock and one state record (``_state``), and the tests replace its seams (``_lstat``,
``_run_tool``, ``_state``) in this one module; split, each seam would have to be patched where it is used.
"""
from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from .._fileio import atomic_write_text as _atomic_write_text
from .._fileio import sha256_file as _sha256

__all__ = ["load_library", "build_info", "cache_dir", "CppBuildWarning", "KernelCacheWarning", "InsecureCacheError",
           "DEFAULT_CXX_TIMEOUT"]

ABI_VERSION = 2  # MS_ABI_VERSION of csrc/ms_common.h: one argument record per call
CSRC = Path(__file__).resolve().parent / "csrc"
DEFAULT_CXX_TIMEOUT = 180.0


class CppBuildWarning(RuntimeWarning):
    """The C++ kernels could not be built; the reference (PyTorch) implementation is used instead."""


class KernelCacheWarning(RuntimeWarning):
    """A kernel cache folder or cached library was refused (insecure, corrupt, unloadable) and replaced."""


class InsecureCacheError(OSError):
    """A kernel cache folder or file is not private to this user (owner, permissions, symlink)."""


_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "info": {}}


def cache_dir() -> Path:
    """Directory holding the compiled kernels (created on demand, ``0700``)."""
    env = os.environ.get("MULTISPIKE_KERNEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "multispike" / "kernels"


def _uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _lstat(path: Path) -> os.stat_result:   # one seam for the tests (they simulate another owner here)
    return os.lstat(path)


def _check_private(path: Path, *, private_read: bool = False, kind: str = "folder") -> None:
    """Raise :class:`InsecureCacheError` unless ``path`` is a real folder/regular file owned by this user that
    group and others cannot write (nor, with ``private_read``, read)."""
    uid = _uid()
    if uid is None:   # pragma: no cover - no POSIX ownership (Windows): nothing to check
        return
    st = _lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise InsecureCacheError(f"{path} is a symbolic link")
    if kind == "folder" and not stat.S_ISDIR(st.st_mode):
        raise InsecureCacheError(f"{path} is not a folder")
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise InsecureCacheError(f"{path} is not a regular file")
    if st.st_uid != uid:
        raise InsecureCacheError(f"{path} is owned by uid {st.st_uid}, not by this user (uid {uid})")
    mask = 0o077 if private_read else 0o022
    if st.st_mode & mask:
        raise InsecureCacheError(f"{path} has mode {stat.S_IMODE(st.st_mode):o}: "
                                 f"{'group/others have access' if private_read else 'group or others can write it'}")


def _private_dir(path: Path, *, private_read: bool = False) -> Path:
    """Create ``path`` (mode 0700) if needed and check that it is private (:func:`_check_private`)."""
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    _check_private(path, private_read=private_read)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")
    return path


_session_dir: list[Path] = []


def _fresh_private_dir() -> Path:
    """A new ``mkdtemp`` folder (0700, ours by construction) for this process, removed at exit."""
    if not _session_dir:
        d = Path(tempfile.mkdtemp(prefix=f"multispike-kernels-{_uid() or 0}-"))
        atexit.register(shutil.rmtree, d, ignore_errors=True)
        _session_dir.append(d)
    return _session_dir[0]


def _select_cache_dir() -> Path:
    """The first private, writable cache folder: the configured one, the per-user temp folder, a fresh one."""
    refused = []
    # The configured folder may be reached through a symlink the user made (a cache on another disk): check the
    # folder it resolves to. The shared temp fallback below is never followed through a link.
    main = Path(os.path.realpath(cache_dir()))
    try:
        return _private_dir(main)
    except OSError as exc:
        main_exc = exc
        refused.append(f"{main} ({exc})")
    alt = Path(tempfile.gettempdir()) / f"multispike-kernels-{_uid() or 0}"
    try:
        d = _private_dir(alt, private_read=True)
        if isinstance(main_exc, InsecureCacheError):
            _cache_warn(f"multispike: the kernel cache {main} is not private ({main_exc}); using {alt} instead")
        return d
    except OSError as exc2:
        refused.append(f"{alt} ({exc2})")
    d = _fresh_private_dir()
    _cache_warn("multispike: no private kernel cache folder: " + "; ".join(refused) + f". Building into {d} for "
                "this process (fix the folders' owner/permissions to keep the compiled kernels).")
    return d


def _cache_warn(msg: str) -> None:
    warnings.warn(msg, KernelCacheWarning, stacklevel=4)


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cxx_timeout() -> float:
    raw = os.environ.get("MULTISPIKE_CXX_TIMEOUT", "").strip()
    if not raw:
        return DEFAULT_CXX_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        _cache_warn(f"multispike: MULTISPIKE_CXX_TIMEOUT must be a positive number of seconds, got {raw!r}; "
                    f"using {DEFAULT_CXX_TIMEOUT:g}")
        return DEFAULT_CXX_TIMEOUT
    return value


class _CompilerTimeout(Exception):
    pass


def _run_tool(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` in its own process group; on time-out kill the whole group (the compiler driver's children
    too, which would otherwise keep the output pipe open) and raise :class:`_CompilerTimeout`."""
    with tempfile.TemporaryFile(mode="w+b") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except BaseException as exc:   # time-out, or Ctrl-C: the compiler's own session would not see SIGINT
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (OSError, AttributeError):  # pragma: no cover - no process groups
                proc.kill()
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise _CompilerTimeout(f"{cmd[0]} did not finish within {timeout:g} s") from None
            raise
        log.seek(0)
        return rc, log.read().decode("utf-8", "replace")


def _cpu_fingerprint() -> str:
    """CPU model and feature flags (the library is built with -march=native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform
        return platform.machine() + platform.processor()


def _sources() -> dict[str, str]:
    """The kernel sources ``{file name: text}`` (every ``.cpp`` and ``.h`` of ``csrc``), read once per build.

    The build compiles exactly these texts (copied into its temporary folder), so the cache key - which hashes
    them all - always describes the library it names, even if the package files change meanwhile."""
    files = sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h") and p.is_file())
    if not any(p.suffix == ".cpp" for p in files):
        raise FileNotFoundError(f"no kernel sources in {CSRC} (the package data was not installed)")
    return {p.name: p.read_text(encoding="utf-8") for p in files}


def _source_digest(src: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name, text in sorted(src.items()):
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def _flag_sets(version: str) -> list[list[str]]:
    # -O2 plus the vectoriser builds ~3x faster than -O3 and gives the same inner loops here (the kernels are
    # memory-bound; what matters is that every per-element loop vectorises, which -fopt-info-vec confirms).
    # Never -ffast-math or FP contraction: the forward must reproduce PyTorch's IEEE operations bit for bit.
    base = ["-O2", "-ftree-vectorize", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]
    if "clang" not in version.lower():
        base.append("-fvect-cost-model=dynamic")
    native = ["-march=native"] if sys.platform != "darwin" else []
    # without OpenMP threads, -fopenmp-simd still honours the kernels' "omp simd" loops
    return [base + native + ["-fopenmp"], base + ["-fopenmp"], base + native + ["-fopenmp-simd"], base + native,
            base]


def _version(cxx: str) -> str:
    try:
        rc, out = _run_tool([cxx, "--version"], timeout=min(30.0, _cxx_timeout()))
    except (OSError, _CompilerTimeout):
        return ""
    return out if rc == 0 else ""


def _sidecar(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _verify(lib: Path) -> None:
    """Raise ``OSError`` unless ``lib`` is our regular file matching its sidecar (size, sha256): only then is it
    safe to map (a truncated ELF file raises SIGBUS when its missing pages are touched)."""
    _check_private(lib, kind="file")
    side = _sidecar(lib)
    try:
        _check_private(side, kind="file")
        record = json.loads(side.read_text(encoding="utf-8"))
        size, digest = int(record["size"]), str(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OSError(f"its checksum file {side.name} is missing or unreadable ({exc})") from None
    actual = lib.stat().st_size
    if actual != size:
        raise OSError(f"it has {actual} bytes, its checksum file records {size} (truncated or replaced)")
    if _sha256(lib) != digest:
        raise OSError("its sha256 does not match its checksum file (corrupt or replaced)")


_UNITS_TAG = "// ms-build-units:"


def _build_units(src: dict[str, str]) -> list[tuple[str, int]]:
    """``(file, k)`` of every extra translation unit: a source whose header has a line ``// ms-build-units: N``
    is also compiled N more times alone, with ``-DMS_UNIT=1..N`` (it splits its template instantiations over
    those units; the main unit, ``-DMS_UNIT=0``, holds everything else and every entry point)."""
    units = []
    for name in sorted(src):
        if not name.endswith(".cpp"):
            continue
        for line in src[name].splitlines()[:10]:
            if line.startswith(_UNITS_TAG):
                count = line[len(_UNITS_TAG):].split()[:1]
                if not count or not count[0].isdigit():
                    raise ValueError(f"kernel source {name}: '{line.strip()}' - expected '{_UNITS_TAG} N' with a "
                                     f"whole number N of extra translation units")
                units += [(name, k) for k in range(1, int(count[0]) + 1)]
    return units


def _try_build(cxx: str, src: dict[str, str], flags: list[str], out: Path) -> str | None:
    """Compile the sources ``src`` into ``out`` atomically, then write its checksum file; return None on success,
    else the compiler's error text. Raises :class:`_CompilerTimeout` if a compiler run exceeds
    ``$MULTISPIKE_CXX_TIMEOUT``.

    The main translation unit includes every ``.cpp`` (the shared header is parsed once); the extra units that a
    source declares (:func:`_build_units`: the IF/LIF backward's instantiations, most of the compile time) are
    compiled after it, side by side on the available cores, and everything is linked into one library. The main
    unit runs alone first, so a compiler or flag set that does not work fails once, not once per unit. Measured
    on 2 cores: 28 s for the first use against ~45 s with one unit."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        for name, text in src.items():
            (Path(tmp) / name).write_text(text, encoding="utf-8")
        compile_flags = [f for f in flags if f != "-shared"] + ["-c"]
        jobs = [("_all_kernels.cpp", "".join(f'#include "{name}"\n' for name in sorted(src) if name.endswith(".cpp")),
                 0)]
        jobs += [(f"_unit_{k}_{name}", f'#include "{name}"\n', k) for name, k in _build_units(src)]
        objects = []

        def compile_unit(job) -> str | None:
            unit_name, text, k = job
            unit = Path(tmp) / unit_name
            unit.write_text(text, encoding="utf-8")
            obj = unit.with_suffix(".o")
            objects.append(obj)
            try:
                rc, log = _run_tool([cxx, *compile_flags, f"-DMS_UNIT={k}", str(unit), "-o", str(obj)],
                                    timeout=_cxx_timeout())
            except OSError as exc:
                return str(exc)
            if rc != 0:
                return log[-2000:] or f"exit status {rc}"
            return None

        err = compile_unit(jobs[0])
        if err is not None:
            return err
        if len(jobs) > 1:
            with ThreadPoolExecutor(max_workers=max(1, min(len(jobs) - 1, os.cpu_count() or 1))) as pool:
                errors = [e for e in pool.map(compile_unit, jobs[1:]) if e is not None]
            if errors:
                return errors[0]
        so = Path(tmp) / out.name
        try:
            rc, log = _run_tool([cxx, *flags, *map(str, sorted(objects)), "-o", str(so)], timeout=_cxx_timeout())
        except OSError as exc:
            return str(exc)
        if rc != 0:
            return log[-2000:] or f"exit status {rc}"
        if not so.is_file():
            return f"the compiler exited 0 but wrote no {so.name}"
        os.chmod(so, 0o700)
        record = json.dumps({"size": so.stat().st_size, "sha256": _sha256(so), "flags": flags, "compiler": cxx})
        # The checksum goes first: a concurrent reader then sees either the old pair (consistent) or the new
        # checksum with the old library (a mismatch, i.e. one harmless rebuild) - never an unverified library.
        _atomic_write_text(_sidecar(out), record)
        os.replace(so, out)
    return None


def _marker_ok(marker: Path) -> bool:
    """Whether a failure marker may be trusted (ours, in our private folder) and is not overridden."""
    if os.environ.get("MULTISPIKE_KERNEL_RETRY", "").strip() not in ("", "0"):
        return False
    try:
        _check_private(marker, kind="file")
    except OSError:
        return False
    return True


def _remember(marker: Path, text: str) -> None:
    try:
        _atomic_write_text(marker, f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}\n")
    except OSError:   # a read-only cache only loses the memory of the failure
        pass


def _declare(lib: ctypes.CDLL) -> None:
    """Declare the entry points (each takes a pointer to its family's argument record) and check that the
    library's records have the sizes of the ctypes mirrors in :mod:`multispike.kernels._abi`."""
    from ._abi import ARGS_INDEX, LifArgs, LmhtArgs, MlifArgs, QuantArgs
    lib.ms_abi_version.restype = ctypes.c_int
    lib.ms_args_size.restype = ctypes.c_int64
    lib.ms_args_size.argtypes = [ctypes.c_int]
    for family, record in (("lif", LifArgs), ("mlif", MlifArgs), ("lmht", LmhtArgs)):
        for direction in ("forward", "backward"):
            fn = getattr(lib, f"ms_{family}_{direction}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.POINTER(record)]
    for name in ("ms_qcfs_forward", "ms_qcfs_backward", "ms_qac_forward", "ms_qac_backward", "ms_pack_exact_u8"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.POINTER(QuantArgs)]
    for record, index in ARGS_INDEX.items():
        size = lib.ms_args_size(index)
        if size != ctypes.sizeof(record):
            raise OSError(f"the library's {record.__name__} has {size} bytes, the ctypes mirror "
                          f"{ctypes.sizeof(record)} (csrc/ms_common.h and kernels/_abi.py disagree)")


def load_library() -> ctypes.CDLL | None:
    """Build (once per source/compiler/CPU) and load the kernel library; ``None`` if it cannot be built."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        try:
            _state["lib"] = _load()
        finally:
            _state["tried"] = True
    return _state["lib"]


def _load() -> ctypes.CDLL | None:
    if os.environ.get("MULTISPIKE_DISABLE_CPP", "").strip() not in ("", "0"):
        _state["info"] = {"status": "disabled by MULTISPIKE_DISABLE_CPP"}
        return None
    cxx = _compiler()
    if cxx is None:
        _warn("no C++ compiler found (looked for $CXX, g++, c++, clang++)")
        return None
    # Importing torch first loads its OpenMP runtime; our library then binds to the same libgomp (one thread
    # pool, no oversubscription between the kernels and PyTorch's own parallel regions).
    import torch  # noqa: F401

    src = _sources()
    version = _version(cxx)
    directory = _select_cache_dir()
    base = "\0".join([str(ABI_VERSION), _source_digest(src), cxx, version, _cpu_fingerprint()])
    timeout_marker = directory / f"multispike_kernels_{hashlib.sha256(base.encode()).hexdigest()[:16]}.timeout"
    if timeout_marker.exists() and _marker_ok(timeout_marker):
        _warn(f"the compiler {cxx} timed out in an earlier build (see {timeout_marker}; delete it or set "
              f"MULTISPIKE_KERNEL_RETRY=1 to try again)")
        return None
    errors = []
    for flags in _flag_sets(version):
        key = hashlib.sha256("\0".join([base, " ".join(flags)]).encode()).hexdigest()[:16]
        out = directory / f"multispike_kernels_{key}.so"
        failed = directory / f"multispike_kernels_{key}.failed"
        if failed.exists() and _marker_ok(failed):
            errors.append(f"{' '.join(flags)}: failed in an earlier build (see {failed})")
            continue
        problem = None
        if os.path.lexists(out):
            try:
                _verify(out)
            except OSError as exc:
                problem = f"the cached kernel library {out} was not loaded: {exc}"
        def build(reason: str | None) -> bool:
            """(Re)build this flag set's library; False (remembered in the failure marker) if it fails."""
            if reason:
                _cache_warn(f"multispike: {reason}; rebuilding it with the same flags")
            err = _try_build(cxx, src, flags, out)
            if err is not None:
                _remember(failed, f"{cxx} {' '.join(flags)}\n{err}")
                errors.append(f"{' '.join(flags)}: {err.strip()}")
            return err is None

        built_now = False
        try:
            if problem or not os.path.lexists(out):
                if not build(problem):
                    continue
                built_now = True
            lib, exc = _open(out)
            if lib is None and not built_now:
                # a verified file that does not load (e.g. a library of another ABI under our name): once more
                problem = f"the cached kernel library {out} failed to load ({exc})"
                if not build(problem):
                    continue
                lib, exc = _open(out)
        except _CompilerTimeout as exc:
            # a hanging compiler hangs for every flag set: stop here, and let later processes skip it at once
            _remember(timeout_marker, str(exc))
            _warn(f"{exc} (set MULTISPIKE_CXX_TIMEOUT to allow longer; remembered in {timeout_marker})")
            return None
        if lib is None:
            _remember(failed, f"{cxx} {' '.join(flags)}\nbuilt, but the library does not load: {exc}")
            errors.append(f"{out}: {exc}")
            continue
        _state["info"] = {"status": "loaded", "path": str(out), "cache_dir": str(directory), "compiler": cxx,
                          "compiler_version": version.splitlines()[0] if version else "", "flags": flags,
                          "openmp": "-fopenmp" in flags, "rebuilt": problem}
        return lib
    _warn("compilation failed:\n" + "\n".join(errors)[-3000:])
    return None


def _open(out: Path) -> tuple[ctypes.CDLL | None, Exception | None]:
    """Verify and load a library; ``(lib, None)`` or ``(None, the error)``."""
    try:
        _verify(out)
        lib = ctypes.CDLL(str(out))
        _declare(lib)
        if lib.ms_abi_version() != ABI_VERSION:
            raise OSError(f"ABI version {lib.ms_abi_version()}, expected {ABI_VERSION}")
    except (OSError, AttributeError) as exc:
        return None, exc
    return lib, None


def _warn(reason: str) -> None:
    _state["info"] = {"status": "unavailable", "reason": reason}
    lines = [ln for ln in reason.splitlines() if ln.strip()]
    summary = " ".join(lines[:2])[:400]
    advice = ("Install a C++ compiler (e.g. g++) to enable them." if "no C++ compiler" in reason else
              "multispike.kernels.build_info()['reason'] has the compiler's output.")
    warnings.warn(f"multispike: the C++ CPU kernels are unavailable ({summary}); using the reference PyTorch "
                  f"implementation instead (slower, same results). {advice}", CppBuildWarning, stacklevel=3)


def build_info() -> dict:
    """Status of the CPU kernel library: ``{"status": "loaded"|"unavailable"|..., "path", "flags", ...}``."""
    if not _state["tried"]:
        return {"status": "not built yet"}
    return dict(_state["info"])
