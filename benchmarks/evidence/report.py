"""Output of a table: JSON-safe values and the Markdown rendering of a result."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(res: dict) -> str:
    """The table as Markdown: provenance, measured rows with the paper column apart, claims with verdicts."""
    env, prof = res["environment"], res["profile"]
    hw = env["gpu"]["name"] if env.get("gpu") else f"CPU ({env['cpu']}, {env['torch_threads']} threads)"
    lines = [f"# {res['title']}", "",
             f"- Command: `{res['command']}`",
             f"- Commit: `{env['commit']}` (code sha256 `{env['code_sha256'][:16]}…`), profile `{prof['name']}`, "
             f"status **{res['status']}**",
             f"- Hardware: {hw}; torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}",
             f"- Wall time: {res['wall_time_s']:.1f} s (budget {res['budget']['table_seconds']:.0f} s)"]
    if res.get("trainer"):
        lines.append(f"- Trainer: every network trained by `{res['trainer']}` (multispike "
                     f"{env.get('multispike') or '?'}); per-phase logs under `train_logs/{res['table']}/`")
    for k, v in res.get("scale", {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Measured (top-1 %, test subset) and, apart, what the paper reports", "",
              "| group | method | setting | measured | notes | paper reports (separate; §8) |",
              "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['group']} | {r['method']} | {r['setting']} | {_fmt(r['accuracy'])} | "
                     f"{r.get('notes', '') or ''} | {r.get('paper_reports') or '—'} |")
    lines += ["", "## Claims", "", "| claim | rule | verdict | reason |", "|---|---|---|---|"]
    for c in res["claims"]:
        lines.append(f"| {c['claim']} | {c['rule']} | **{c['verdict']}** | {c['reason']} |")
    lines += ["", "## Training phases (planned vs run; cuts by the time budget)", "",
              "| phase | epochs planned | epochs run | seconds | precision | cuts / reuse |",
              "|---|---|---|---|---|---|"]
    for p in res["phases"]:
        cuts = "; ".join(c["reason"] for c in p.get("cuts", [])) or ""
        if p.get("reused"):
            cuts = (cuts + "; " if cuts else "") + p["reused"]
        lines.append(f"| {p.get('name')} | {_fmt(p.get('epochs_planned'), 0)} | {_fmt(p.get('epochs_run'), 2)} | "
                     f"{_fmt(p.get('seconds'), 1)} | {p.get('precision', '')} | {cuts} |")
    if res["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    if res["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['part']}: `{e['error']}`" for e in res["errors"]]
    lines += ["", f"Paper numbers come only from {res['paper_source']}; they are for the papers' datasets, networks "
              f"and schedules and are shown for orientation, not as targets at this scale.", ""]
    return "\n".join(lines)
