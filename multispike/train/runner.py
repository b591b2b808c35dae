"""Running a training job from a config: datasets, the model (or the hybrid ANN -> SNN hook), then the Trainer.

:func:`run_training` is what ``multispike train`` calls, alone or under ``torchrun``. Any piece may be passed in
instead of being built (custom models, event-data loaders, tests).
"""
from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig, save_config
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, seed_everything
from .engine import Trainer
from .hybrid import call_convert_hook

__all__ = ["subset_indices", "build_loaders", "build_model", "load_convert_hook", "run_training"]


def subset_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A class-stratified, seeded choice of ``n`` indices (sorted).

    Classes are visited round-robin over a seeded permutation, so every class gets ``⌊n/K⌋`` or ``⌈n/K⌉``
    samples while it has them.
    """
    N = labels.shape[0]
    if n >= N:
        return torch.arange(N)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(N, generator=gen)
    lab = labels[perm]
    within = torch.empty(N, dtype=torch.int64)
    for c in torch.unique(lab):
        pos = (lab == c).nonzero().flatten()
        within[pos] = torch.arange(pos.numel())
    # sort by (rank within class, position in the permutation): round-robin over classes
    key = within * N + torch.arange(N)
    chosen = perm[torch.argsort(key)[:n]]
    return chosen.sort().values


def build_loaders(cfg: TrainConfig, dist: DistInfo) -> tuple[Any, Any, Any]:
    """Train and test :class:`~multispike.data.TensorLoader` for ``cfg.dataset`` (sharded by rank)."""
    from ..data import Augment, TensorLoader, load_dataset

    images, labels, info = load_dataset(cfg.dataset, cfg.data_dir, "train", **cfg.dataset_kwargs)
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
        raise TypeError(f"dataset {cfg.dataset!r} yields {getattr(images, 'dtype', type(images).__name__)} "
                        f"{tuple(getattr(images, 'shape', ()))}; the train command handles uint8 image datasets "
                        f"[N, C, H, W]. For other data build loaders yourself and call "
                        f"multispike.train.run_training(cfg, train_loader=..., eval_loader=...)")
    if cfg.subset is not None:
        idx = subset_indices(labels, cfg.subset, cfg.seed)
        images, labels = images[idx], labels[idx]
    test_images, test_labels, _ = load_dataset(cfg.dataset, cfg.data_dir, "test", **cfg.dataset_kwargs)
    if cfg.eval_subset is not None:
        test_images, test_labels = test_images[:cfg.eval_subset], test_labels[:cfg.eval_subset]
    augment = Augment(crop_padding=cfg.crop_padding if cfg.augment else 0, hflip=cfg.hflip and cfg.augment,
                      pad_mode=cfg.pad_mode, cutout=cfg.cutout if cfg.augment else 0)
    mean, std = (info.mean, info.std) if cfg.normalize else (None, None)
    device = dist.device if dist.device.type == "cuda" else None
    train = TensorLoader(images, labels, cfg.batch_size, shuffle=True, seed=cfg.seed, augment=augment, mean=mean,
                         std=std, rank=dist.rank, world_size=dist.world_size, device=device,
                         channels_last=cfg.channels_last)
    # Evaluation shards the test set without shuffling; the at most world_size-1 left-over images are skipped
    # (identically in every run), and all ranks see equal shard sizes so the counts add up.
    test = TensorLoader(test_images, test_labels, cfg.eval_batch_size or cfg.batch_size, shuffle=False, seed=cfg.seed,
                        mean=mean, std=std, rank=dist.rank, world_size=dist.world_size, device=device,
                        channels_last=cfg.channels_last)
    return train, test, info


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int | None) -> nn.Module:
    """``create_model`` from the config (model, neuron, T, neuron_kwargs, model_kwargs)."""
    from ..models import create_model

    return create_model(cfg.model, num_classes=num_classes, neuron=cfg.neuron, T=cfg.timesteps,
                        in_channels=in_channels, neuron_kwargs=cfg.neuron_arguments(), **cfg.model_kwargs)


def load_convert_hook(spec: str | Callable) -> Callable[[nn.Module, TrainConfig], nn.Module]:
    """Resolve ``"package.module:function"`` (or a callable) to the hybrid-mode conversion hook."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"convert_hook must be 'package.module:function', got {spec!r}")
    module_name, attr = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"convert_hook {spec!r}: cannot import {module_name!r} ({exc})") from exc
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"convert_hook {spec!r}: {module_name} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"convert_hook {spec!r} is not callable")
    return fn


def _hybrid_model(cfg: TrainConfig, convert_fn: Callable | None, train_loader: Any, device: torch.device
                  ) -> tuple[nn.Module, str]:
    from .rebuild import rebuild_model

    ckpt = load_checkpoint(cfg.ann_checkpoint)
    # rebuild_model also handles ANNs that were QAT-prepared or started from another checkpoint
    ann, name = rebuild_model(ckpt)
    ann.train()
    ann = ann.to(device)   # data-driven hooks (threshold calibration) feed it batches from the training loader
    hook = load_convert_hook(convert_fn if convert_fn is not None else cfg.convert_hook)
    return call_convert_hook(hook, ann, cfg, train_loader), name


def _init_model(cfg: TrainConfig) -> tuple[nn.Module, str]:
    """The network of ``cfg.init_from`` (structure and weights); ``cfg`` takes its name, classes and T."""
    from .rebuild import model_timesteps, rebuild_model

    ckpt = load_checkpoint(cfg.init_from)
    model, name = rebuild_model(ckpt)
    model.train()
    if cfg.model is not None and cfg.model != name:
        raise ValueError(f"--init-from {cfg.init_from} holds a {name!r} network, but --model is {cfg.model!r}; drop "
                         f"--model (it comes from the checkpoint)")
    cfg.model = name
    saved = ckpt.meta.get("config") or {}
    for key in ("num_classes", "in_channels"):
        mine, theirs = getattr(cfg, key), saved.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"--init-from {cfg.init_from} has {key}={theirs}, the data have {mine}")
    T = model_timesteps(model)
    if T is not None and T != cfg.timesteps:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: --init-from {cfg.init_from} runs T={T} (its conversion's); using it instead of "
                  f"timesteps={cfg.timesteps}")
        cfg.timesteps = T
    return model, name


def run_training(cfg: TrainConfig, *, model: nn.Module | None = None, train_loader: Any = None,
                 eval_loader: Any = None, convert_fn: Callable | None = None, dist: DistInfo | None = None) -> dict:
    """Run a complete training job as the config describes (what ``multispike train`` calls).

    Any of ``model``/``train_loader``/``eval_loader`` may be supplied instead of being built from the config
    (tests, event data, custom models). ``convert_fn(ann_model, cfg)`` overrides ``cfg.convert_hook`` in
    hybrid mode.

    Writes to ``cfg.out`` (rank 0): ``config.json``, ``args.yaml``, ``log.jsonl``, ``summary.json`` and
    ``checkpoints/``. Returns the summary record.
    """
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    owns_dist = dist is None
    dist = dist if dist is not None else init_distributed(cfg.device)
    try:
        seed_everything(cfg.seed, dist.rank, cfg.deterministic)
        out = Path(cfg.out)
        resume_ckpt = None
        if cfg.resume is not None:
            resume_ckpt = load_checkpoint(out if cfg.resume == "auto" else cfg.resume)
        elif (out / "checkpoints" / "last.json").exists():
            if not cfg.overwrite:
                raise ValueError(f"{out} already holds checkpoints of a run; pass --resume to continue it, "
                                 f"--overwrite to discard them, or choose another --out")
            barrier(dist)
            if dist.is_primary:
                shutil.rmtree(out / "checkpoints")
                for name in ("log.jsonl", "summary.json"):
                    (out / name).unlink(missing_ok=True)
            barrier(dist)
        info = None
        if train_loader is None:
            train_loader, built_eval, info = build_loaders(cfg, dist)
            eval_loader = built_eval if eval_loader is None else eval_loader
        if cfg.num_classes is None:
            cfg.num_classes = info.num_classes if info is not None else getattr(model, "num_classes", None)
        if cfg.in_channels is None:
            if info is not None and info.input_shape:
                cfg.in_channels = info.input_shape[0]
            elif model is not None and hasattr(model, "in_channels"):
                cfg.in_channels = model.in_channels
        model_name = cfg.model
        if model is None:
            if cfg.mode == "hybrid":
                model, ann_name = _hybrid_model(cfg, convert_fn, train_loader, dist.device)
                model_name = cfg.model = cfg.model or ann_name
            elif cfg.init_from is not None:
                model, model_name = _init_model(cfg)
            else:
                if cfg.num_classes is None:
                    raise ValueError("num_classes is unknown: set --num-classes")
                model = build_model(cfg, cfg.num_classes, cfg.in_channels)
            if cfg.prepare_qat is not None:
                from ..quant.qac import prepare_qat

                prepare_qat(model, **cfg.prepare_qat)
        if dist.is_primary:
            save_config(cfg, out, extra={"world_size": dist.world_size, "device": str(dist.device)})
        trainer = Trainer(model, train_loader, eval_loader, cfg, dist=dist, model_name=model_name)
        return trainer.fit(resume=resume_ckpt)
    finally:
        if owns_dist:
            cleanup_distributed()
