"""The demo's driver: train the shared ReLU ANN, run the registered rows, print and save the results."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..models.digits import DigitsCNN
from .common import _loaders, evaluate_prefixes, format_table, train_classifier
from .config import DemoConfig
from .rows import ROWS

__all__ = ["run_demo"]


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    """Train, convert and evaluate; returns (and optionally saves) the results dict."""
    known = tuple(ROWS)
    unknown = [r for r in cfg.rows if r not in known]
    if unknown:
        raise ValueError(f"unknown demo row(s) {unknown}; choose from {', '.join(known)}")
    if isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {cfg.threads!r}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: DemoConfig, log: Callable[[str], None]) -> dict:
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    train, test, calib = _loaders(cfg)
    ctx: dict = {"train": train, "test": test, "calib": calib, "sections": []}
    rows: list[dict] = []
    base = "ReLU ANN -> IF (rate conversion)"

    ann = DigitsCNN("relu")
    secs = train_classifier(ann, train, cfg.epochs, cfg.lr, "ANN (ReLU)", cfg.progress)
    ann_acc = evaluate_prefixes(ann, test)[0]
    rows.append({"group": base, "method": "ANN (ReLU)", "T": None, "accuracy": ann_acc,
                 "notes": f"{cfg.epochs} epochs, {secs:.1f} s"})
    log(f"ANN accuracy: {ann_acc:.2f}% ({cfg.epochs} epochs, {secs:.1f} s)")
    ctx["ann"], ctx["ann_accuracy"] = ann, ann_acc

    # The IF rows come right after the ANN (the table's first group), the others in the order cfg.rows names them.
    order = (["if"] if "if" in cfg.rows else []) + [name for name in dict.fromkeys(cfg.rows) if name != "if"]
    for name in order:
        start = time.perf_counter()
        rows.extend(ROWS[name](cfg, ctx, log))
        if name != "if":
            log(f"[{name}] rows done in {time.perf_counter() - start:.1f} s")
    per_layer = ctx.get("spike_rates", {})

    result = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "dataset": {"name": "digits", "train": len(train.labels) if hasattr(train, "labels") else None,
                    "source": "scikit-learn digits (8x8), embedded in the installed package"},
        "rows": rows,
        "spike_rates": {str(T): r for T, r in per_layer.items()},
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
        "threads": cfg.threads,
    }
    log("")
    log(format_table(rows))
    if per_layer:
        layers = list(next(iter(per_layer.values())))
        log("\nPer-layer spike rate (spikes per neuron per step) of the converted IF network:")
        log("T     " + "  ".join(f"{n:>8}" for n in layers))
        for T, r in per_layer.items():
            log(f"{T:<5} " + "  ".join(f"{r[n]:8.4f}" for n in layers))
    for section in ctx["sections"]:
        log("\n" + section)
    log(f"\nwall time: {result['wall_time_s']:.1f} s")
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "results.json.tmp"
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out / "results.json")
        log(f"results saved to {out / 'results.json'}")
    return result
