"""Provenance of a result file: commit, code digest, versions, hardware and the command as run."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from benchmarks.evidence.profiles import REPO

#: What trained every network of a result file written by this code (issue 15: one training loop).
TRAINER = "multispike.train"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_digest() -> str:
    """sha256 over the library and this suite's sources (path + bytes, sorted): identifies the code that ran
    even where the copy has no ``.git`` (recompute at a commit to check it)."""
    h = hashlib.sha256()
    files = sorted([*(REPO / "multispike").rglob("*.py"), *(REPO / "benchmarks" / "evidence").glob("*.py")])
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, commit: str | None = None) -> dict:
    """Commit, versions and hardware, for the result files."""
    sha = commit or os.environ.get("MULTISPIKE_COMMIT") or _git("rev-parse", "HEAD")
    dirty = None
    if commit is None and _git("rev-parse", "HEAD"):
        status = _git("status", "--porcelain", "--", "multispike", "benchmarks/evidence")
        dirty = bool(status)
    env = {
        "commit": sha or "unknown (no git in this copy; pass --commit)",
        "commit_source": "--commit" if commit else ("MULTISPIKE_COMMIT" if os.environ.get("MULTISPIKE_COMMIT")
                                                    else ("git" if sha else "none")),
        "worktree_dirty": dirty,
        "code_sha256": code_digest(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "trainer": TRAINER,
    }
    try:
        import multispike
        env["multispike"] = multispike.__version__
    except Exception:  # noqa: BLE001 - provenance must never fail the run
        env["multispike"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    return env


def command_line(argv: list[str] | None = None) -> str:
    """The command as run from the repository root (``PYTHONPATH=. python3 <script> <args>``)."""
    argv = list(sys.argv if argv is None else argv)
    out_env = os.environ.get("OUT")
    if out_env:  # the device runner's output folder: record "$OUT", not its machine-specific path
        argv = [("$OUT" if a == out_env else a) for a in argv]
    script = Path(argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = argv[0]
    args = " ".join(_quote(a) for a in argv[1:])
    return f"PYTHONPATH=. python3 {script_s} {args}".strip()


def _quote(a: str) -> str:
    return a if a and (a == "$OUT" or all(c.isalnum() or c in "-_./=:,+" for c in a)) else json.dumps(a)
