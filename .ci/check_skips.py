#!/usr/bin/env python3
"""Fail CI on any skipped test whose reason is not on the allow-list (called by ``.ci/run``).

Reads a pytest log written with ``-rs``/``-ra`` (``pyproject.toml`` sets ``addopts = "-ra"``): every
``SKIPPED [n] path:line: reason`` line of the short test summary must match one pattern of ``ALLOWED`` (a regular
expression matched at the start of the reason). Only skips for things that may legitimately be absent are listed:
optional packages, data sets, a C++ compiler, Triton, sockets. A skip caused by a broken kernel build, a missing
module of multispike or a renamed model is not on the list, so CI fails instead of going green with fewer tests.

To add a legitimate skip, add its reason's fixed prefix here (with the test that raises it) in the same commit.

Usage: ``python3 .ci/check_skips.py LOG`` (exit 0: all skips allowed; 1: a skip is not; 2: unreadable log).
"""
from __future__ import annotations

import re
import sys

ALLOWED: list[tuple[str, str]] = [
    # (reason pattern, where it comes from)
    (r"C\+\+ kernels: no C\+\+ compiler on this machine$", "tests/conftest.py require_cpp_library"),
    (r"C\+\+ kernels: disabled by MULTISPIKE_DISABLE_CPP$", "tests/conftest.py require_cpp_library"),
    (r"buffer pool disabled$", "test_kernels_lif.py (MULTISPIKE_KERNEL_POOL off)"),
    (r"triton is not installed$", "test_kernels_triton.py"),
    (r"interpreter mode runs CPU tensors$", "test_kernels_triton.py (TRITON_INTERPRET=1)"),
    (r"SKIP interpreter unusable here: ", "test_kernels_triton.py (this triton/numpy cannot interpret the probe)"),
    (r"NIR export needs the optional extra multispike\[nir\] \(nir, nirtorch, h5py\)$", "test_export_*.py"),
    (r"the cross-check runs the graph with nirtorch$", "test_export_nir.py"),
    (r"snnTorch is not installed \(pip install --no-deps ", "test_export_nir.py"),
    (r"optional dependency 'aedat' \(pip install multispike\[events\]\) missing$", "test_events_readers.py"),
    (r"Pillow not installed$", "test_events_encoding.py"),
    (r"real CIFAR-10 not found at ", "test_data_static.py"),
    (r"CIFAR-10 not found \(", "test_train_cli.py"),
    (r"N-MNIST-small not found ", "test_events_*.py, test_cli_workflows.py"),
    (r"tonic sample files not found at ", "test_events_readers.py"),
    (r"shared datasets not found at ", "test_evidence_quick.py"),
    (r"gloo cannot open sockets here: ", "test_train_ddp.py (no loopback sockets in this sandbox)"),
    (r"POSIX file ownership only$", "test_kernels_cache.py (Windows)"),
]

_SKIP_LINE = re.compile(r"^SKIPPED \[(\d+)\] (.+?):(\d+): (.*)$")


def check(lines: list[str]) -> tuple[list[str], int]:
    """``(disallowed summary lines, number of allowed skips)``."""
    bad, allowed = [], 0
    patterns = [re.compile(p) for p, _ in ALLOWED]
    for line in lines:
        m = _SKIP_LINE.match(line.rstrip("\n"))
        if not m:
            continue
        reason = m.group(4).strip()
        if reason.startswith("Skipped: "):   # pytest prefixes pytest.skip() reasons raised inside a test
            reason = reason[len("Skipped: "):]
        if any(p.match(reason) for p in patterns):
            allowed += int(m.group(1))
        else:
            bad.append(line.rstrip("\n"))
    return bad, allowed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError as exc:
        print(f"CI: cannot read the test log {argv[1]}: {exc}", file=sys.stderr)
        return 2
    bad, allowed = check(lines)
    if bad:
        print(f"CI: {len(bad)} skip reason(s) not on the allow-list in .ci/check_skips.py - a test that should run "
              f"did not:", file=sys.stderr)
        for line in bad:
            print("  " + line, file=sys.stderr)
        return 1
    print(f"CI: {allowed} skipped test(s), all for allow-listed reasons")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
