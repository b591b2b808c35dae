"""The kernel cache is part of the trusted code base: folders must be private, libraries verified before they are
mapped, a broken cached library rebuilt once with the same flags, and compiler failures/time-outs remembered.

The real compiler runs once per session at most (the library the other kernel tests use); every rebuild here
goes through ``_build._try_build`` with the compiler call replaced by a copy of that library, so the code that
writes, verifies, replaces and loads libraries is the real one. Compiler faults run in fresh processes with a
fake ``$CXX`` script.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from multispike.kernels import _build
from multispike.kernels._build import CppBuildWarning, KernelCacheWarning

from conftest import require_cpp_library

POSIX = pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file ownership only")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A copy of a correctly built kernel library (the session's)."""
    require_cpp_library()
    src = Path(_build.build_info()["path"])
    dst = tmp_path_factory.mktemp("pristine") / "lib.so"
    shutil.copyfile(src, dst)
    return dst


@pytest.fixture
def cache(tmp_path, monkeypatch, pristine):
    """Fresh loader state, private temp dir and cache; compiler calls copy the pristine library (and are counted)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(_build, "_session_dir", [])
    monkeypatch.setattr(_build, "_state", {"lib": None, "tried": False, "info": {}})
    monkeypatch.setenv("MULTISPIKE_KERNEL_CACHE", str(tmp_path / "cache"))
    for var in ("MULTISPIKE_DISABLE_CPP", "MULTISPIKE_KERNEL_RETRY", "MULTISPIKE_CXX_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    calls = []
    real = _build._run_tool

    def fake_run(cmd, timeout):
        if cmd[1:] == ["--version"]:
            return real(cmd, timeout)
        out = cmd[cmd.index("-o") + 1]
        if "-c" in cmd:   # one translation unit: an object file (the fake link below ignores it)
            Path(out).write_bytes(b"")
            return 0, ""
        calls.append([a for a in cmd[1:cmd.index("-o")] if not a.endswith(".o")])   # the link: the flags
        shutil.copyfile(pristine, out)
        return 0, ""

    monkeypatch.setattr(_build, "_run_tool", fake_run)

    class Cache:
        root = tmp_path / "cache"
        fallback = tmp / f"multispike-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}"
        builds = calls

        @classmethod
        def fresh_copy(cls):
            """Continue with a copy of the cache at a new path (new files): glibc returns an already loaded library
            for a path or file it has mapped, so a second load in this process must not reuse either."""
            new = cls.root.with_name(cls.root.name + "-x")
            shutil.copytree(cls.root, new, copy_function=shutil.copyfile)
            os.chmod(new, 0o700)
            cls.root = new
            os.environ["MULTISPIKE_KERNEL_CACHE"] = str(new)

        @staticmethod
        def load():
            _build._state.update(lib=None, tried=False, info={})
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                lib = _build.load_library()
            return lib, [w for w in rec if issubclass(w.category, (KernelCacheWarning, CppBuildWarning))]

    return Cache


def _lib_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("multispike_kernels_*.so"))


def _replace(path: Path, data: bytes) -> None:
    """Give ``path`` new content as a new file: this process still maps the old one (changing a mapped library
    in place would crash the test process itself, which is the very fault the loader must avoid)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_fresh_build_writes_a_private_folder_and_a_checksum(cache, pristine):
    lib, warns = cache.load()
    assert lib is not None and lib.ms_abi_version() == _build.ABI_VERSION and not warns
    info = _build.build_info()
    assert info["cache_dir"] == str(cache.root) and info["rebuilt"] is None
    assert len(cache.builds) == 1 and cache.builds[0] == info["flags"] == _build._flag_sets(
        _build._version(_build._compiler()))[0]
    if hasattr(os, "getuid"):
        assert stat.S_IMODE(cache.root.stat().st_mode) == 0o700
    (so,) = _lib_files(cache.root)
    side = json.loads(Path(str(so) + ".sha256").read_text())
    assert side["size"] == so.stat().st_size == pristine.stat().st_size and side["sha256"] == _build._sha256(so)
    cache.load()   # second process: loads the verified library, no compile
    assert len(cache.builds) == 1


@pytest.mark.parametrize("damage", ["truncated", "corrupt", "no_checksum", "bad_checksum_file"])
def test_a_damaged_library_is_never_mapped_but_rebuilt_with_the_same_flags(cache, damage):
    cache.load()
    cache.fresh_copy()
    (so,) = _lib_files(cache.root)
    side = Path(str(so) + ".sha256")
    data = so.read_bytes()
    if damage == "truncated":        # e.g. disk full while copying: mapping it would raise SIGBUS
        _replace(so, data[:len(data) // 3])
    elif damage == "corrupt":        # same size, other bytes
        _replace(so, data[:4096] + bytes(b ^ 0xFF for b in data[4096:8192]) + data[8192:])
    elif damage == "no_checksum":    # a library from before the checksums, or planted without one
        side.unlink()
    else:
        side.write_text("{not json")
    lib, warns = cache.load()
    assert lib is not None and lib.ms_abi_version() == _build.ABI_VERSION
    assert len(cache.builds) == 2 and cache.builds[1] == cache.builds[0]   # intended flags, not a fallback set
    assert len(warns) == 1 and issubclass(warns[0].category, KernelCacheWarning)
    assert str(so) in str(warns[0].message) and "rebuilding it with the same flags" in str(warns[0].message)
    assert _build.build_info()["rebuilt"] and _build.build_info()["flags"] == cache.builds[0]
    assert so.read_bytes() == data   # replaced in place by the rebuild
    cache.load()
    assert len(cache.builds) == 2   # fixed for good


def test_a_verified_library_that_does_not_load_is_rebuilt_once(cache):
    cache.load()
    cache.fresh_copy()
    (so,) = _lib_files(cache.root)
    good = so.read_bytes()
    _replace(so, b"\x7fELF not really a library" * 10)   # consistent checksum, but dlopen fails
    Path(str(so) + ".sha256").write_text(json.dumps({"size": so.stat().st_size, "sha256": _build._sha256(so)}))
    lib, warns = cache.load()
    assert lib is not None and len(cache.builds) == 2 and so.read_bytes() == good
    assert any("failed to load" in str(w.message) for w in warns)


@POSIX
@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_group_or_world_writable_cache_is_refused(cache, mode):
    cache.root.mkdir(mode=0o700)
    os.chmod(cache.root, mode)
    lib, warns = cache.load()
    assert lib is not None and _build.build_info()["cache_dir"] == str(cache.fallback)
    assert any("not private" in str(w.message) and "can write" in str(w.message) for w in warns)
    assert stat.S_IMODE(cache.fallback.stat().st_mode) == 0o700 and not _lib_files(cache.root)


def _foreign(monkeypatch, *paths: Path) -> None:
    """Make ``paths`` (and everything under them) look owned by another account - these very files: a file that
    replaces one of them later (a rebuild) is ours again."""
    real = _build._lstat
    inodes = {os.lstat(q).st_ino for q in paths}

    def lstat(p):
        st = real(p)
        if st.st_ino in inodes or any(q in Path(p).parents for q in paths if q.is_dir()):
            fields = list(st)
            fields[stat.ST_UID] = st.st_uid + 1
            return os.stat_result(fields)
        return st

    monkeypatch.setattr(_build, "_lstat", lstat)


@POSIX
def test_a_planted_library_in_a_foreign_fallback_folder_is_not_loaded(cache, monkeypatch, pristine):
    """Another account created <tmp>/multispike-kernels-<uid> first and put a library under the expected name
    (the hash of public inputs) with a matching checksum: it must never be loaded."""
    cache.load()
    cache.fresh_copy()
    (so,) = _lib_files(cache.root)
    planted = cache.fallback / so.name
    cache.fallback.mkdir(mode=0o700)
    shutil.copyfile(so, planted)
    shutil.copyfile(str(so) + ".sha256", str(planted) + ".sha256")
    os.chmod(cache.root, 0o777)          # the main cache is unusable: the loader turns to the fallback
    _foreign(monkeypatch, cache.fallback)
    lib, warns = cache.load()
    used = Path(_build.build_info()["path"])
    assert lib is not None and cache.fallback not in used.parents and cache.root not in used.parents
    assert used.parent.parent == Path(tempfile.gettempdir()) and used.parent.name.startswith("multispike-kernels-")
    assert stat.S_IMODE(used.parent.stat().st_mode) == 0o700
    text = " ".join(str(w.message) for w in warns)
    assert "owned by uid" in text and str(cache.fallback) in text
    assert len(cache.builds) == 2   # built afresh in the private folder


@POSIX
def test_a_foreign_or_symlinked_main_cache_and_files_are_refused(cache, monkeypatch, tmp_path):
    cache.load()
    (so,) = _lib_files(cache.root)
    _foreign(monkeypatch, so)            # one library of another owner in our folder: rebuilt, not loaded
    lib, warns = cache.load()
    assert lib is not None and any("owned by uid" in str(w.message) for w in warns) and len(cache.builds) == 2
    monkeypatch.setattr(_build, "_lstat", os.lstat)
    _foreign(monkeypatch, cache.root)
    cache.load()
    assert _build.build_info()["cache_dir"] == str(cache.fallback)
    monkeypatch.setattr(_build, "_lstat", os.lstat)
    # a configured cache reached through the user's own symlink is checked where it leads
    link = tmp_path / "link"
    link.symlink_to(cache.root)
    monkeypatch.setenv("MULTISPIKE_KERNEL_CACHE", str(link))
    _, warns = cache.load()
    assert _build.build_info()["cache_dir"] == str(cache.root) and not warns
    os.chmod(cache.root, 0o777)
    _, warns = cache.load()
    assert _build.build_info()["cache_dir"] == str(cache.fallback) and any("can write" in str(w.message)
                                                                          for w in warns)
    # the shared temp fallback is never followed through a link (another account could have made it)
    shutil.rmtree(cache.fallback)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.fallback.symlink_to(elsewhere)
    _, warns = cache.load()
    assert Path(_build.build_info()["cache_dir"]).name.startswith(cache.fallback.name + "-")
    assert any("symbolic link" in str(w.message) for w in warns) and not list(elsewhere.iterdir())


# ------------------------------------------------------------------------------ compiler faults, fresh processes
PROBE = textwrap.dedent("""
    import json, time, warnings
    warnings.simplefilter("always")
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as rec:
        from multispike.kernels import _build
        lib = _build.load_library()
    print(json.dumps({"lib": lib is not None, "s": time.monotonic() - t0, "info": _build.build_info(),
                      "warnings": [f"{w.category.__name__}: {w.message}" for w in rec]}))
""")


def _fake_cxx(tmp_path: Path, body: str) -> tuple[Path, Path]:
    log = tmp_path / "compiles.log"
    cxx = tmp_path / "bin" / "fake-cxx"
    cxx.parent.mkdir()
    cxx.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fake-cxx 1.0'; exit 0; fi\n"
                   f"echo compile >> {log}\n{body}\n")
    cxx.chmod(0o755)
    return cxx, log


def _probe(tmp_path: Path, cxx: Path, **env) -> dict:
    full = dict(os.environ, CXX=str(cxx), PATH=str(cxx.parent), MULTISPIKE_KERNEL_CACHE=str(tmp_path / "cache"),
                PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                            os.environ.get("PYTHONPATH", "")]), **env)
    for var in ("MULTISPIKE_DISABLE_CPP", "MULTISPIKE_KERNEL_RETRY"):
        if var not in env:
            full.pop(var, None)
    res = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def _count(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_hanging_compiler_is_killed_and_remembered(tmp_path):
    # the "compiler" waits on a child of its own: the time-out must kill the whole process group
    cxx, log = _fake_cxx(tmp_path, f"{shutil.which('sleep')} 900 &\nwait\nexit 1")
    first = _probe(tmp_path, cxx, MULTISPIKE_CXX_TIMEOUT="1")
    # killed after ~1 s (the bound leaves room for importing torch on a loaded machine), after the first flag set
    assert not first["lib"] and first["s"] < 120 and _count(log) == 1
    assert any("did not finish within 1 s" in w and "MULTISPIKE_CXX_TIMEOUT" in w for w in first["warnings"])
    assert list((tmp_path / "cache").glob("*.timeout"))
    second = _probe(tmp_path, cxx, MULTISPIKE_CXX_TIMEOUT="1")
    assert not second["lib"] and _count(log) == 1   # falls back at once: the compiler is not called again
    assert any("timed out in an earlier build" in w for w in second["warnings"])
    _probe(tmp_path, cxx, MULTISPIKE_CXX_TIMEOUT="1", MULTISPIKE_KERNEL_RETRY="1")
    assert _count(log) == 2


def test_a_failing_compiler_is_remembered_per_flag_set(tmp_path):
    cxx, log = _fake_cxx(tmp_path, "echo 'fake-cxx: error: unsupported option' >&2\nexit 1")
    first = _probe(tmp_path, cxx)
    n_sets = len(_build._flag_sets("fake-cxx 1.0"))
    assert not first["lib"] and _count(log) == n_sets
    assert any("unsupported option" in w for w in first["warnings"])
    assert first["info"]["status"] == "unavailable" and "unsupported option" in first["info"]["reason"]
    markers = list((tmp_path / "cache").glob("*.failed"))
    assert len(markers) == n_sets and "unsupported option" in markers[0].read_text()
    second = _probe(tmp_path, cxx)
    assert not second["lib"] and _count(log) == n_sets   # no compiler call at all
    assert "failed in an earlier build" in second["info"]["reason"]
    for m in markers:   # a marker planted by someone else (not ours / not private) is ignored
        m.chmod(0o666)
    _probe(tmp_path, cxx)
    assert _count(log) == 2 * n_sets


def test_cxx_timeout_setting_is_validated(monkeypatch):
    monkeypatch.setenv("MULTISPIKE_CXX_TIMEOUT", "soon")
    with pytest.warns(KernelCacheWarning, match="MULTISPIKE_CXX_TIMEOUT"):
        assert _build._cxx_timeout() == _build.DEFAULT_CXX_TIMEOUT
    monkeypatch.setenv("MULTISPIKE_CXX_TIMEOUT", "42")
    assert _build._cxx_timeout() == 42.0
    monkeypatch.delenv("MULTISPIKE_CXX_TIMEOUT")
    assert 120 <= _build._cxx_timeout() <= 180


def test_run_tool_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\nsleep 900 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)
    t0 = time.monotonic()
    with pytest.raises(_build._CompilerTimeout, match="did not finish within 0.5 s"):
        _build._run_tool([str(script)], timeout=0.5)
    assert time.monotonic() - t0 < 60
    child = int(pidfile.read_text())
    for _ in range(50):   # the grandchild `sleep` is gone too (reaped by init once killed)
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        try:   # Linux: a killed, not yet reaped process is a zombie ("Z")
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        pytest.fail(f"the compiler's child {child} survived the time-out")


# ------------------------------------------------------------------------------------------- parallel build units
def test_the_lif_source_declares_its_build_units():
    assert _build._build_units(_build._sources()) == [("lif.cpp", k) for k in range(1, 5)]
    with pytest.raises(ValueError, match="x.cpp.*whole number"):
        _build._build_units({"x.cpp": "// ms-build-units: four\n"})


def _recording_tool(pristine, fail_unit=None):
    calls = []

    def run(cmd, timeout):
        calls.append(cmd)
        unit = next((a for a in cmd if a.startswith("-DMS_UNIT=")), None)
        if unit == f"-DMS_UNIT={fail_unit}":
            return 1, f"error in unit {fail_unit}"
        out = cmd[cmd.index("-o") + 1]
        if "-c" in cmd:
            Path(out).write_bytes(b"")
        else:
            shutil.copyfile(pristine, out)
        return 0, ""
    return calls, run


def test_main_unit_first_then_the_extra_units_then_one_link(tmp_path, monkeypatch, pristine):
    calls, run = _recording_tool(pristine)
    monkeypatch.setattr(_build, "_run_tool", run)
    flags = ["-O2", "-shared", "-fPIC"]
    out = tmp_path / "lib.so"
    assert _build._try_build("g++", _build._sources(), flags, out) is None
    units = [next(a for a in c if a.startswith("-DMS_UNIT=")) for c in calls[:-1]]
    assert units[0] == "-DMS_UNIT=0" and sorted(units[1:]) == [f"-DMS_UNIT={k}" for k in range(1, 5)]
    assert all("-c" in c and "-shared" not in c for c in calls[:-1])
    link = calls[-1]
    assert "-c" not in link and link[1:4] == flags and sum(a.endswith(".o") for a in link) == 5
    assert out.read_bytes() == pristine.read_bytes() and Path(str(out) + ".sha256").exists()


@pytest.mark.parametrize("fail_unit", [0, 3])
def test_a_failing_unit_stops_the_build(tmp_path, monkeypatch, pristine, fail_unit):
    calls, run = _recording_tool(pristine, fail_unit)
    monkeypatch.setattr(_build, "_run_tool", run)
    out = tmp_path / "lib.so"
    err = _build._try_build("g++", _build._sources(), ["-O2", "-shared"], out)
    assert err == f"error in unit {fail_unit}" and not out.exists()
    assert all("-c" in c for c in calls)   # no link
    assert len(calls) == (1 if fail_unit == 0 else 5)   # the main unit fails alone: the others never start


def test_the_sources_also_build_as_one_unit(tmp_path):
    """Without MS_UNIT every instantiation stays in one translation unit (a manual single-file build): checked
    for syntax and template instantiation, without code generation."""
    require_cpp_library()
    cxx = _build.build_info()["compiler"]
    unity = tmp_path / "all.cpp"
    unity.write_text("".join(f'#include "{p}"\n' for p in sorted(_build.CSRC.glob("*.cpp"))))
    res = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", "-fopenmp", f"-I{_build.CSRC}", str(unity)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
