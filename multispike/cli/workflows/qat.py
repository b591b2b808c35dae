"""``multispike qat``'s summary: the per-layer T_l / bit-width table of a QAT run, read from its ``log.jsonl``."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .common import format_table

__all__ = ["qat_epoch_table"]


def qat_epoch_table(run_dir: str | os.PathLike) -> tuple[str, list[dict]]:
    """Per-layer T_l and bit width at the end of every epoch of a QAT run, from its ``log.jsonl``.

    Returns ``(text table, rows)`` with one row per layer: ``{"layer", "T": [per epoch], "bit_width": [...]}``.
    """
    log_path = Path(run_dir) / "log.jsonl"
    if not log_path.exists():
        raise FileNotFoundError(f"{log_path} does not exist; is {run_dir} the --out of a QAT run?")
    epochs = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    epochs = [e for e in epochs if e.get("event") == "epoch" and e.get("quantizers")]
    if not epochs:
        return "no quantizer was logged (the model has no QAC quantizer)", []
    # log.jsonl keys are sorted as text; order layers naturally ("features.3" before "features.10")
    layers = sorted(epochs[-1]["quantizers"], key=lambda n: [int(p) if p.isdigit() else p
                                                             for p in re.split(r"(\d+)", n)])
    rows = [{"layer": l, "T": [e["quantizers"].get(l, {}).get("timesteps") for e in epochs],
             "bit_width": [e["quantizers"].get(l, {}).get("bit_width") for e in epochs]} for l in layers]
    head = ["layer"] + [f"T_l e{e['epoch']}" for e in epochs] + ["bits (last)"]
    body = [[r["layer"], *[str(t) for t in r["T"]],
             "-" if r["bit_width"][-1] is None else f"{r['bit_width'][-1]:.3g}"] for r in rows]
    mean = ["mean T"] + [f"{e['mean_timesteps']:.3g}" if e.get("mean_timesteps") is not None else "-" for e in epochs]
    mean.append(f"{epochs[-1]['mean_bit_width']:.3g}" if epochs[-1].get("mean_bit_width") is not None else "-")
    return format_table([head, *body, mean]), rows
