"""Training M-LIF networks on event-camera data with multi-level input encoding (``multispike events-train``).

:func:`train_events` integrates every recording once into ``T_F`` frames (the *frame budget*), then, for each lane
count S, encodes them with :class:`~multispike.data.events.MultiLevelEncoder` (algorithms.md §5.5: groups of
``G = 2^(S-1)`` binary frames, ``Q_F = ⌈T_F/G⌉`` steps, one-hot lanes merged to ``Σ 2^s lane_s``), builds an
M-LIF VGGSNN with S-lane neurons running ``Q_F`` steps, and trains it with the TET loss through the ordinary
:func:`~multispike.train.run_training` (checkpoints, ``log.jsonl``, resume). The comparison of S = 1, 2, 3 at
one frame budget is the one-hot M-LIF paper's DVS experiment at CPU scale.

Example::

    result = train_events(out="runs/nmnist", lanes=(1, 2, 3), frame_budget=8, epochs=3)
    [(r["S"], r["Q_F"], r["acc"]) for r in result["rows"]]
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .._errors import ParameterError
from .._text import format_table as _format_table
from .._text import percent as _pct
from .._text import percent_curve as _curve
from .._validate import check_positive_int
from .checkpoint import atomic_write_text

__all__ = ["EncodedEventLoader", "train_events", "event_frames"]


class EncodedEventLoader:
    """Time-major batches ``([Q_F, B, 2, H, W], [B])`` of multi-level-encoded event frames held in memory.

    The raw frames (``[N, T_F, 2, H, W]`` counts, integrated once) go through ``encoder`` on every fetch, so
    augmentation draws fresh flips/rolls. The order and the augmentation draws are functions of
    ``(seed, epoch)`` only (``set_epoch``), which is what the Trainer's bit-exact resume needs.
    """

    def __init__(self, frames: torch.Tensor, labels: torch.Tensor, encoder: Any, batch_size: int, *,
                 shuffle: bool = False, seed: int = 0) -> None:
        if frames.dim() != 5 or labels.shape[0] != frames.shape[0]:
            raise ValueError(f"EncodedEventLoader: expected frames [N, T_F, 2, H, W] and labels [N], got "
                             f"{tuple(frames.shape)} and {tuple(labels.shape)}")
        self.frames, self.labels, self.encoder = frames, labels.long(), encoder
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.shuffle, self.seed, self.epoch = shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return (self.frames.shape[0] + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.frames.shape[0]
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        self.epoch += 1
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            xs = [self.encoder(self.frames[i], generator=gen) for i in idx.tolist()]
            yield torch.stack(xs, dim=1).float(), self.labels[idx]


def event_frames(dataset: str, data_dir: str | None, split: str, frame_budget: int, samples: int | None,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Integrate every recording of a split once into ``frame_budget`` frames (SpikingJelly ``split_by='number'``).

    Returns ``(frames uint8 [N, T_F, 2, H, W], labels [N], dataset metadata)``; ``samples`` keeps a seeded
    class-balanced subset. Counts above 255 are clipped (the encoder only asks whether a count is non-zero).
    """
    from ..data import get_dataset, load_dataset
    from .runner import subset_indices

    info = get_dataset(dataset)
    if info.kind != "events":
        raise ValueError(f"dataset {dataset!r} is not an event dataset; events-train supports nmnist (and other "
                         f"registered event datasets)")
    ds, labels, _ = load_dataset(dataset, data_dir, split, data_type="frame", frames_number=frame_budget,
                                 split_by="number")
    idx = torch.arange(len(ds))
    if samples is not None:
        idx = subset_indices(labels, check_positive_int(samples, f"{split} samples"), seed)
    frames = torch.stack([torch.as_tensor(ds[i][0]).clamp_(0, 255).to(torch.uint8) for i in idx.tolist()])
    return frames, labels[idx], {**ds.metadata, "num_samples": int(idx.numel())}


def train_events(*, out: str | os.PathLike, dataset: str = "nmnist", lanes: Sequence[int] = (1, 2, 3),
                 frame_budget: int = 8, epochs: int = 3, model: str = "vggsnn_small", train_samples: int | None = None,
                 test_samples: int | None = None, batch_size: int = 32, lr: float = 1e-3, opt: str = "adam",
                 weight_decay: float = 0.0, tet_lambda: float = 1e-3, size: int | None = None, augment: bool = False,
                 data_dir: str | None = None, seed: int = 0, num_threads: int | None = None,
                 neuron_kwargs: Mapping[str, Any] | None = None, progress: bool = True, overwrite: bool = False,
                 log=print) -> dict:
    """Train and evaluate an M-LIF VGGSNN on event data for every lane count S at one frame budget.

    Every recording is integrated into ``frame_budget`` = T_F frames; for lane count S the multi-level encoder
    (§5.5) groups ``G = 2^(S-1)`` binary frames into one step, so the network runs ``Q_F = ⌈T_F / G⌉`` steps
    with ``S``-lane one-hot M-LIF neurons (TET's DVS settings: hard reset, β = 0.5, θ = 1) and the merged
    input ``Σ 2^s lane_s``. Loss: TET (§7.6). Each S is a full training run in ``<out>/S<S>`` (checkpoints,
    ``log.jsonl``); ``<out>/results.json`` and ``<out>/report.txt`` hold the comparison.
    """
    from ..data.events import MultiLevelEncoder, encoded_steps
    from ..models import create_model, model_info
    from .config import resolve_config
    from .runner import run_training

    lanes = [check_positive_int(s, "lanes", fix="Every M-LIF neuron needs S >= 1 lanes.") for s in lanes]
    if not lanes:
        raise ParameterError("{lanes} needs at least one lane count (e.g. 1 2 3)", "lanes")
    frame_budget = check_positive_int(frame_budget, "frame_budget", fix="Give the number of binary frames T_F.")
    for S in lanes:
        encoded_steps(frame_budget, S)   # raises when T_F < G = 2^(S-1), naming both
    epochs = check_positive_int(epochs, "epochs")
    out = Path(out)
    if num_threads is not None:
        torch.set_num_threads(check_positive_int(num_threads, "num_threads"))
    t_load = time.perf_counter()
    train_frames, train_labels, train_meta = event_frames(dataset, data_dir, "train", frame_budget, train_samples, seed)
    test_frames, test_labels, test_meta = event_frames(dataset, data_dir, "test", frame_budget, test_samples, seed)
    load_s = time.perf_counter() - t_load
    H, W = (size, size) if size is not None else tuple(train_frames.shape[-2:])
    info = model_info(model)
    log(f"{dataset}: {train_frames.shape[0]} train / {test_frames.shape[0]} test recordings integrated into "
        f"T_F = {frame_budget} frames in {load_s:.1f} s; model {model} ({info.source}) at 2x{H}x{W}")
    rows = []
    for S in lanes:
        Q_F = encoded_steps(frame_budget, S)
        enc_train = MultiLevelEncoder(frame_budget, lanes=S, size=size, augment=augment, merge=True)
        enc_test = MultiLevelEncoder(frame_budget, lanes=S, size=size, augment=False, merge=True)
        train = EncodedEventLoader(train_frames, train_labels, enc_train, batch_size, shuffle=True, seed=seed)
        test = EncodedEventLoader(test_frames, test_labels, enc_test, batch_size, shuffle=False, seed=seed)
        nk = {"lanes": S, **dict(neuron_kwargs or {})}
        net = create_model(model, num_classes=10, neuron="mlif", T=Q_F, in_channels=2, neuron_kwargs=nk,
                           input_size=(2, H, W))
        cfg = resolve_config(overrides={
            "model": model, "neuron": "mlif", "lanes": S, "timesteps": Q_F, "dataset": dataset, "data_dir": data_dir,
            "num_classes": 10, "in_channels": 2, "model_kwargs": {"input_size": [2, H, W]},
            "neuron_kwargs": dict(neuron_kwargs or {}), "mode": "snn", "loss": "tet", "tet_lambda": tet_lambda,
            "epochs": epochs, "batch_size": batch_size, "opt": opt, "lr": lr, "weight_decay": weight_decay,
            "sched": "cosine", "augment": augment, "out": str(out / f"S{S}"), "seed": seed, "progress": progress,
            "num_threads": num_threads, "overwrite": overwrite})
        log(f"S = {S}: G = {1 << (S - 1)} binary frames per step, Q_F = {Q_F} steps")
        t0 = time.perf_counter()
        summary = run_training(cfg, model=net, train_loader=train, eval_loader=test)
        rows.append({"S": S, "G": 1 << (S - 1), "Q_F": Q_F, "T_F": frame_budget, "acc": summary["final_acc"],
                     "acc_per_t": summary["final_acc_per_t"], "best_acc": summary["best_acc"],
                     "params": summary["params"], "train_time_s": round(time.perf_counter() - t0, 1),
                     "run": str(out / f"S{S}")})
    result = {"command": "events-train", "dataset": dataset, "model": model, "model_source": info.source,
              "frame_budget": frame_budget, "epochs": epochs, "batch_size": batch_size, "lr": lr, "opt": opt,
              "loss": "tet", "tet_lambda": tet_lambda, "augment": augment, "input_size": [2, H, W], "seed": seed,
              "train_data": train_meta, "test_data": test_meta, "rows": rows,
              "total_time_s": round(time.perf_counter() - t_load, 1)}
    table = [("S", "G", "Q_F steps", "T_F", "params", "train s", "test acc %", "acc at t = 1..Q_F (%)")]
    table += [(r["S"], r["G"], r["Q_F"], r["T_F"], r["params"], r["train_time_s"], _pct(r["acc"]),
               _curve(r["acc_per_t"] or [])) for r in rows]
    text = "\n".join([f"M-LIF {model} on {dataset} ({test_frames.shape[0]} test recordings), frame budget T_F = "
                      f"{frame_budget}, TET loss, {epochs} epoch(s)", _format_table(table),
                      f"total {result['total_time_s']} s"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result
