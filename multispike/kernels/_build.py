"""Lazy build and loading of the C++/OpenMP CPU kernels.

The kernels are plain C++17 (no PyTorch or Python headers), compiled on first use with the system C++
compiler into a shared library that is loaded with :mod:`ctypes`. This needs only ``g++`` (or ``c++``/
``clang++``; ``$CXX`` wins) - no ``ninja``, no Python development headers - and takes a few seconds.

The library is cached per user in ``$MULTISPIKE_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/multispike/kernels``
or ``~/.cache/multispike/kernels``) under a name that hashes the source, the compiler, the flags and the CPU
features (so a cache shared between different machines never loads a binary built for another CPU). Builds
are atomic (compile to a temporary file, then rename), so concurrent processes are safe.

If no compiler works, one warning is issued and :func:`load_library` returns ``None``; the kernels then fall
back to the reference functions. ``MULTISPIKE_DISABLE_CPP=1`` disables the CPU kernels on purpose.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

__all__ = ["load_library", "build_info", "cache_dir", "CppBuildWarning"]

ABI_VERSION = 1


class CppBuildWarning(RuntimeWarning):
    """The C++ kernels could not be built; the reference (PyTorch) implementation is used instead."""


_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "info": {}}


def cache_dir() -> Path:
    """Directory holding the compiled kernels (created on demand)."""
    env = os.environ.get("MULTISPIKE_KERNEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "multispike" / "kernels"


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cpu_fingerprint() -> str:
    """CPU model and feature flags (the library is built with -march=native)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags", "Features", "CPU part"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform
        return platform.machine() + platform.processor()


def _sources() -> str:
    from ._cpu_src_lif import SOURCE as LIF
    from ._cpu_src_multi import SOURCE as MULTI
    return LIF + "\n" + MULTI


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
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _try_build(cxx: str, src: str, flags: list[str], out: Path) -> str | None:
    """Compile ``src`` into ``out`` atomically; return None on success, else the compiler's error text."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        cpp = Path(tmp) / "kernels.cpp"
        cpp.write_text(src, encoding="utf-8")
        so = Path(tmp) / out.name
        try:
            res = subprocess.run([cxx, *flags, str(cpp), "-o", str(so)], capture_output=True, text=True,
                                 timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)
        if res.returncode != 0:
            return (res.stderr or res.stdout)[-2000:]
        os.replace(so, out)
    return None


def _declare(lib: ctypes.CDLL) -> None:
    vp, i64, i32, dp = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.POINTER(ctypes.c_double)
    lp = ctypes.POINTER(ctypes.c_int64)
    lib.ms_abi_version.restype = i32
    lib.ms_lif_forward.restype = i32
    lib.ms_lif_forward.argtypes = [i32, vp, i64, i64, i64, vp, i64, vp, vp, vp, vp, dp, lp, i32]
    lib.ms_lif_backward.restype = i32
    lib.ms_lif_backward.argtypes = [i32, vp, i64, i64, i64, vp, i64, vp, vp, vp, vp, vp, i64, vp, vp, dp, dp, lp,
                                    i32]
    lib.ms_mlif_forward.restype = i32
    lib.ms_mlif_forward.argtypes = lib.ms_lif_forward.argtypes
    lib.ms_mlif_backward.restype = i32
    lib.ms_mlif_backward.argtypes = lib.ms_lif_backward.argtypes
    lib.ms_lmht_forward.restype = i32
    lib.ms_lmht_forward.argtypes = [i32, vp, i64, i64, i64, vp, i64, vp, vp, dp, dp, lp, i32]
    lib.ms_lmht_backward.restype = i32
    lib.ms_lmht_backward.argtypes = [i32, vp, i64, i64, i64, vp, i64, vp, vp, vp, i64, vp, dp, dp, dp, lp, i32]


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
    errors = []
    for flags in _flag_sets(version):
        key = hashlib.sha256("\0".join([str(ABI_VERSION), src, cxx, version, " ".join(flags),
                                        _cpu_fingerprint()]).encode()).hexdigest()[:16]
        out = cache_dir() / f"multispike_kernels_{key}.so"
        if not out.exists():
            try:
                err = _try_build(cxx, src, flags, out)
            except OSError as exc:  # cache dir not writable: build into a private temporary directory
                alt = Path(tempfile.gettempdir()) / f"multispike-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
                out = alt / out.name
                err = None if out.exists() else _try_build(cxx, src, flags, out)
                if err is None and not out.exists():
                    err = str(exc)
            if err is not None:
                errors.append(f"{' '.join(flags)}: {err.strip()}")
                continue
        try:
            lib = ctypes.CDLL(str(out))
            _declare(lib)
            if lib.ms_abi_version() != ABI_VERSION:
                raise OSError("ABI version mismatch")
        except (OSError, AttributeError) as exc:
            errors.append(f"{out}: {exc}")
            continue
        _state["info"] = {"status": "loaded", "path": str(out), "compiler": cxx,
                          "compiler_version": version.splitlines()[0] if version else "", "flags": flags,
                          "openmp": "-fopenmp" in flags}
        return lib
    _warn("compilation failed:\n" + "\n".join(errors)[-3000:])
    return None


def _warn(reason: str) -> None:
    _state["info"] = {"status": "unavailable", "reason": reason}
    warnings.warn(f"multispike: the C++ CPU kernels are unavailable ({reason.splitlines()[0]}); using the "
                  f"reference PyTorch implementation instead (slower, same results). Install a C++ compiler "
                  f"(e.g. g++) to enable them.", CppBuildWarning, stacklevel=3)


def build_info() -> dict:
    """Status of the CPU kernel library: ``{"status": "loaded"|"unavailable"|..., "path", "flags", ...}``."""
    if not _state["tried"]:
        return {"status": "not built yet"}
    return dict(_state["info"])
