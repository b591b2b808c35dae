"""``.ci/check_skips.py`` (run by ``.ci/run``): a skip whose reason is not allow-listed fails CI.

Runs pytest on a throw-away test file and feeds its real ``-ra`` summary to the checker, so a change in pytest's
summary format cannot silently let every skip through. Also checks that every reason the suite's own skips use is
on the list, and that the reasons which must never be skips (a kernel build failing with a compiler present, a zoo
model missing, our own module failing to import) are not.
"""
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_skips", ROOT / ".ci" / "check_skips.py")
check_skips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_skips)

import conftest  # noqa: E402


def _pytest_log(tmp_path: Path, body: str) -> Path:
    (tmp_path / "test_sample.py").write_text("import pytest\n" + textwrap.dedent(body))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-p",
                          "no:randomly", str(tmp_path / "test_sample.py")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    log = tmp_path / "ci.log"
    log.write_text(res.stdout + res.stderr)
    return log


def test_allowed_skips_pass_and_others_fail(tmp_path):
    log = _pytest_log(tmp_path, f'''
        @pytest.fixture(scope="module")
        def lib():
            pytest.skip({conftest.NO_COMPILER!r})
        def test_a(lib): pass
        def test_b(lib): pass
        @pytest.mark.skipif(True, reason="triton is not installed")
        def test_c(): pass
        def test_ok(): pass
    ''')
    assert check_skips.main(["x", str(log)]) == 0
    bad, allowed = check_skips.check(log.read_text().splitlines())
    assert bad == [] and allowed == 3
    log = _pytest_log(tmp_path, '''
        def test_zoo():
            pytest.skip("the zoo has no resnet8_cifar yet")
        def test_import():
            pytest.importorskip("multispike_no_such_module")
        def test_build():
            pytest.skip("C++ kernels unavailable here: {'status': 'unavailable'}")
        @pytest.mark.skipif(True, reason="triton is not installed")
        def test_fine(): pass
    ''')
    bad, allowed = check_skips.check(log.read_text().splitlines())
    assert allowed == 1 and len(bad) == 3
    assert any("resnet8_cifar" in b for b in bad) and any("could not import" in b for b in bad)
    assert check_skips.main(["x", str(log)]) == 1


def test_every_skip_reason_of_the_suite_is_allowed():
    """The reasons pinned in the tests (literal strings) are on the list - so the list and the tests move together."""
    reasons = [conftest.NO_COMPILER, conftest.CPP_DISABLED, "buffer pool disabled", "triton is not installed",
               "interpreter mode runs CPU tensors", "SKIP interpreter unusable here: ValueError x",
               "NIR export needs the optional extra multispike[nir] (nir, nirtorch, h5py)",
               "the cross-check runs the graph with nirtorch", "Pillow not installed",
               "optional dependency 'aedat' (pip install multispike[events]) missing",
               "real CIFAR-10 not found at /x", "CIFAR-10 not found (set MULTISPIKE_DATA)",
               "N-MNIST-small not found at /x", "shared datasets not found at /x", "POSIX file ownership only"]
    lines = [f"SKIPPED [1] tests/t.py:1: {r}" for r in reasons]
    assert check_skips.check(lines) == ([], len(reasons))
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for literal in ("buffer pool disabled", "triton is not installed", "interpreter mode runs CPU tensors",
                    "Pillow not installed", "the cross-check runs the graph with nirtorch"):
        assert literal in tests, f"{literal!r} is allow-listed but no test uses it any more: drop it from the list"


@pytest.mark.parametrize("reason", ["C++ kernels unavailable here: {'status': 'unavailable'}",
                                    "the zoo has no spike_driven_transformer_tiny yet",
                                    "resnet8_cifar is not registered in the zoo yet",
                                    "could not import 'multispike.neurons.lmht': No module named x",
                                    "vgg_small not usable here: boom", "model zoo not available"])
def test_reasons_that_hide_a_broken_package_are_not_allowed(reason):
    bad, _ = check_skips.check([f"SKIPPED [3] tests/t.py:1: {reason}"])
    assert len(bad) == 1
