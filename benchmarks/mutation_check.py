#!/usr/bin/env python3
"""Mutation check: deliberate bugs must make the test suite fail (issue 14, "tests that cannot fail").

Each mutation is applied to a throw-away copy of the repository (``git ls-files``: tracked and untracked, not
ignored), never to the checkout itself; then the test files that guard that code run there with ``-x``. A
mutation is *caught* when pytest exits with failures (exit code 1). An exit code of 0 - or 5 (nothing ran), or
only skips - means the suite cannot see that bug, and this script exits 1.

Mutations:

* ``cpp_syntax``    a syntax error in the C++ kernel source (a compiler is present: kernel tests must fail, not skip)
* ``lmht_mix_bwd``  the fused LM-HT backward applies Ω instead of Ωᵀ to dL/dI (input gradient of the T-GIM)
* ``lmht_domega``   the fused LM-HT backward writes dL/dΩ transposed
* ``qcfs_detach``   QCFS backward without ∂/∂ϑ through the output scale (``clamp(q) * ϑ.detach()``)
* ``qcfs_paper``    QCFS ∂/∂ϑ = q (the derivative printed in the paper; ϑ detached inside the floor)
* ``qcfs_ste``      the floor's straight-through gradient halved
* ``zoo_rename``    a zoo model's registered name changed (``vggsnn_woap`` -> ``vggsnn_wo_ap``)
* ``zoo_rename2``   another one (``resnet8_cifar`` -> ``resnet8``)

Usage::

    python benchmarks/mutation_check.py                 # all mutations (about 2-3 minutes on 2 cores)
    python benchmarks/mutation_check.py qcfs_detach     # some
    python benchmarks/mutation_check.py --baseline ...  # also run the unmutated copy (must pass)

The C++ build of the mutated copy uses a private temporary kernel cache, so the user's cache is not touched.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (file, old text, new text, test files that must fail)
MUTATIONS: dict[str, tuple[str, str, str, list[str]]] = {
    "cpp_syntax": ("multispike/kernels/csrc/abi.cpp", "int ms_abi_version() { return MS_ABI_VERSION; }",
                   "int ms_abi_version() { return MS_ABI_VERSION }  // mutation: missing semicolon",
                   ["tests/test_kernels_lif.py", "tests/test_kernels_multilevel.py"]),
    "lmht_mix_bwd": ("multispike/kernels/csrc/lmht.cpp", "wcol[(size_t)t] = (S)c.omega[t * T + j];",
                     "wcol[(size_t)t] = (S)c.omega[j * T + t];  // mutation: Omega instead of Omega^T",
                     ["tests/test_kernels_multilevel.py"]),
    "lmht_domega": ("multispike/kernels/csrc/lmht.cpp", "part[T + t * T + j] = row_dot",
                    "part[T + j * T + t] = row_dot", ["tests/test_kernels_multilevel.py"]),
    "qcfs_detach": ("multispike/quant/qcfs.py", "return torch.clamp(q, 0.0, 1.0) * threshold",
                    "return torch.clamp(q, 0.0, 1.0) * threshold.detach()", ["tests/test_qcfs_gradients.py"]),
    "qcfs_paper": ("multispike/quant/qcfs.py", "q = floor_ste(z / threshold * levels + shift) / levels",
                   "q = floor_ste(z / threshold.detach() * levels + shift) / levels", ["tests/test_qcfs_gradients.py"]),
    "qcfs_ste": ("multispike/quant/qcfs.py", "    def backward(ctx, g):\n        return g\n",
                 "    def backward(ctx, g):\n        return 0.5 * g\n", ["tests/test_qcfs_gradients.py"]),
    "zoo_rename": ("multispike/models/vggsnn.py", "def vggsnn_woap(", "def vggsnn_wo_ap(",
                   ["tests/test_models_zoo.py::test_zoo_names_are_stable", "tests/test_metrics_energy.py"]),
    "zoo_rename2": ("multispike/models/resnet.py", "def resnet8_cifar(", "def resnet8(",
                    ["tests/test_models_zoo.py::test_zoo_names_are_stable",
                     "tests/test_models_zoo.py::test_every_shipped_config_names_a_zoo_model",
                     "tests/test_metrics_report.py"]),
}


def _copy_repo(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            target = dst / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _run(name: str | None, workdir: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=str(workdir), MULTISPIKE_KERNEL_CACHE=str(workdir / ".kernel-cache"))
    env.pop("MULTISPIKE_DISABLE_CPP", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    fail = next((ln for ln in lines if ln.startswith(("FAILED", "ERROR"))), lines[-1] if lines else "")
    return res.returncode, fail[:240], time.monotonic() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"mutations to run (default: all): {', '.join(MUTATIONS)}")
    ap.add_argument("--baseline", action="store_true", help="also run each test set on the unmutated copy")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    args = ap.parse_args(argv)
    names = args.names or list(MUTATIONS)
    unknown = [n for n in names if n not in MUTATIONS]
    if unknown:
        ap.error(f"unknown mutation(s) {unknown}; known: {', '.join(MUTATIONS)}")
    if not shutil.which("g++") and not shutil.which("c++") and not os.environ.get("CXX") and "cpp_syntax" in names:
        print("note: no C++ compiler here; the kernel tests skip (allow-listed), so cpp_syntax cannot be caught")
    missed = []
    with tempfile.TemporaryDirectory(prefix="multispike-mutation-") as tmp:
        base = Path(tmp) / "repo"
        _copy_repo(base)
        for name in names:
            path, old, new, tests = MUTATIONS[name]
            if args.baseline:
                rc, last, secs = _run(None, base, tests, args.timeout)
                print(f"baseline {name:12s} rc={rc} ({secs:.0f} s) {last}")
            work = Path(tmp) / name
            shutil.copytree(base, work, symlinks=True)
            text = (work / path).read_text()
            if text.count(old) != 1:
                print(f"{name}: the text to mutate is not (exactly once) in {path}; update MUTATIONS", file=sys.stderr)
                return 2
            (work / path).write_text(text.replace(old, new))
            rc, last, secs = _run(name, work, tests, args.timeout)
            caught = rc == 1
            print(f"{'caught' if caught else 'MISSED'} {name:12s} rc={rc} ({secs:.0f} s) {last}")
            if not caught:
                missed.append(name)
            shutil.rmtree(work, ignore_errors=True)
    if missed:
        print(f"mutation check: {len(missed)} mutation(s) not caught: {', '.join(missed)}", file=sys.stderr)
        return 1
    print(f"mutation check: all {len(names)} mutation(s) caught")
    return 0


if __name__ == "__main__":
    sys.exit(main())
