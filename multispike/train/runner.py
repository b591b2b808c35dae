"""Running a training job from a config: datasets, the model (or the hybrid ANN -> SNN hook), then the Trainer.

:func:`run_training` is what ``multispike train`` calls, alone or under ``torchrun``. Any piece may be passed in
instead of being built (custom models, event-data loaders, tests).
"""
from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._errors import ParameterError
from .checkpoint import load_checkpoint
from .config import TrainConfig, save_config
from .distributed import DistInfo, barrier, cleanup_distributed, init_distributed, seed_everything
from .engine import Trainer
from .guards import RunLock, check_finite_state
from .hybrid import call_convert_hook

__all__ = ["subset_indices", "build_loaders", "build_model", "load_convert_hook", "run_training"]


def subset_indices(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A class-stratified, seeded choice of ``n`` indices (sorted); see
    :func:`multispike.data.subset.stratified_indices` (the one rule for training and evaluation subsets)."""
    from ..data.subset import stratified_indices

    return stratified_indices(labels, n, seed)


def _checkpoint_record(cfg: TrainConfig) -> tuple[str | None, dict]:
    """``(path, data record)`` of the checkpoint a run starts from (``--init-from`` / hybrid ANN), if any."""
    src = cfg.init_from if cfg.init_from is not None else (cfg.ann_checkpoint if cfg.mode == "hybrid" else None)
    src = src if src is not None else cfg.init_weights
    if src is None:
        return None, {}
    from .rebuild import read_checkpoint_meta

    path, meta = read_checkpoint_meta(src)
    return str(path), dict((meta.get("config") or {}).get("data_info") or {})


def build_loaders(cfg: TrainConfig, dist: DistInfo) -> tuple[Any, Any, Any]:
    """Train and test :class:`~multispike.data.TensorLoader` for ``cfg.dataset`` (sharded by rank)."""
    from ..data import Augment, TensorLoader, load_dataset
    from ..data.provenance import DataSpec, check_data, data_record, describe_data

    # the stratified subset is chosen before decoding (image trees decode only the chosen files)
    images, labels, info = load_dataset(cfg.dataset, cfg.data_dir, "train", subset=cfg.subset, subset_seed=cfg.seed,
                                        progress=cfg.progress and dist.is_primary, **cfg.dataset_kwargs)
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
        raise TypeError(f"dataset {cfg.dataset!r} yields {getattr(images, 'dtype', type(images).__name__)} "
                        f"{tuple(getattr(images, 'shape', ()))}; the train command handles uint8 image datasets "
                        f"[N, C, H, W]. For other data build loaders yourself and call "
                        f"multispike.train.run_training(cfg, train_loader=..., eval_loader=...)")
    src, record = _checkpoint_record(cfg)
    # a run that starts from a checkpoint must see the classes and input size that network was trained on
    check_data(record, info, images, where=f"training split; the network of {src}" if src else "")
    test_images, test_labels, test_info = load_dataset(cfg.dataset, cfg.data_dir, "test", subset=cfg.eval_subset,
                                                       subset_seed=cfg.seed, progress=cfg.progress and dist.is_primary,
                                                       **cfg.dataset_kwargs)
    check_data(data_record(info, images, cfg.normalize), test_info, test_images, where="test split")
    cfg.data_info = data_record(info, images, cfg.normalize)
    if dist.is_primary:
        spec = DataSpec(cfg.dataset, cfg.data_dir, cfg.normalize, dict(cfg.dataset_kwargs), origin="config")
        print(describe_data(spec, info, images, "train", int(labels.shape[0]))
              + f"; test {int(test_labels.shape[0])} images")
    augment = Augment(crop_padding=cfg.crop_padding if cfg.augment else 0, hflip=cfg.hflip and cfg.augment,
                      pad_mode=cfg.pad_mode, cutout=cfg.cutout if cfg.augment else 0,
                      hflip_alternate=cfg.hflip_mode == "alternate")
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
    """Resolve the user's ``--convert-hook`` (a registered name, ``"package.module:function"`` or a callable).

    The user typed this name, so an unregistered ``module:function`` is imported; names read from a checkpoint
    go through the allow-list instead (:mod:`multispike.train.hooks`).
    """
    from .hooks import resolve_convert_hook

    return resolve_convert_hook(spec, allow_import=True, source="convert_hook")


def _hybrid_model(cfg: TrainConfig, convert_fn: Callable | None, train_loader: Any, device: torch.device
                  ) -> tuple[nn.Module, str]:
    from .rebuild import rebuild_model

    ckpt = load_checkpoint(cfg.ann_checkpoint)
    check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")   # a diverged network would train on garbage
    # rebuild_model also handles ANNs that were QAT-prepared or started from another checkpoint
    ann, name = rebuild_model(ckpt)
    ann.train()
    ann = ann.to(device)   # data-driven hooks (threshold calibration) feed it batches from the training loader
    hook = load_convert_hook(convert_fn if convert_fn is not None else cfg.convert_hook)
    return call_convert_hook(hook, ann, cfg, train_loader), name


def _resolve_freeze_bn(cfg: TrainConfig, converted_start: bool) -> None:
    """``freeze_bn`` left unset: on when the run starts from a converted network (its BN statistics are the ANN's,
    and LM-HT's exact ×L bias scale only holds with BN in eval mode), off otherwise."""
    if cfg.freeze_bn is None:
        cfg.freeze_bn = bool(converted_start)
        if cfg.freeze_bn and os.environ.get("RANK", "0") == "0":
            print("note: training starts from a converted network: BatchNorm statistics stay frozen (the ANN's); "
                  "pass --no-freeze-bn to re-estimate them")


def _init_model(cfg: TrainConfig) -> tuple[nn.Module, str]:
    """The network of ``cfg.init_from`` (structure and weights); ``cfg`` takes its name, classes and T."""
    from ..convert.recipe import model_timesteps
    from .rebuild import rebuild_model

    ckpt = load_checkpoint(cfg.init_from)
    check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")   # a diverged network would train on garbage
    model, name = rebuild_model(ckpt)
    model.train()
    if cfg.model is not None and cfg.model != name:
        raise ParameterError(f"{{init_from}} {cfg.init_from} holds a {name!r} network, but {{model}} is "
                             f"{cfg.model!r}; drop {{model}} (it comes from the checkpoint)", "init_from", "model")
    cfg.model = name
    from .hybrid import convert_init_model   # --neuron lmht on a QCFS ANN: the hybrid (exact) conversion

    model, how = convert_init_model(model, cfg)
    if how is not None and os.environ.get("RANK", "0") == "0":
        print(f"note: --init-from {cfg.init_from} is a QCFS ANN and --neuron is lmht: {how}")
    _resolve_freeze_bn(cfg, how is not None or bool(ckpt.meta.get("conversion")))
    saved = ckpt.meta.get("config") or {}
    for key in ("num_classes", "in_channels"):
        mine, theirs = getattr(cfg, key), saved.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ParameterError(f"{{init_from}} {cfg.init_from} has {key}={theirs}, the data have {mine}",
                                 "init_from")
    T = model_timesteps(model)
    if T is not None and T != cfg.timesteps:
        if os.environ.get("RANK", "0") == "0":
            print(f"note: the network of --init-from {cfg.init_from} runs T={T}; using it instead of "
                  f"timesteps={cfg.timesteps}")
        cfg.timesteps = T
    return model, name


def _clip_batches(cfg: TrainConfig, train_loader: Any, dist: DistInfo, n: int = 4) -> list[torch.Tensor]:
    """``n`` training batches for the data-driven clip initialisation, on the run's device."""
    from ..data import TensorLoader

    if isinstance(train_loader, TensorLoader):
        # a separate, seeded pass (no augmentation) so the training order is exactly that of a run without it
        src = TensorLoader(train_loader.images, train_loader.labels, train_loader.batch_size, shuffle=True,
                           seed=cfg.seed, mean=train_loader.mean, std=train_loader.std, rank=train_loader.rank,
                           world_size=train_loader.world_size)
        it = iter(src)
    else:
        it = iter(train_loader)
    batches = []
    for x, _ in it:
        batches.append(x.to(dist.device))
        if len(batches) == n:
            break
    return batches


def _broadcast_params(model: nn.Module, kinds: tuple, dist: DistInfo) -> None:
    """Every rank starts from rank 0's clips (each rank measured its own shard)."""
    if dist.world_size > 1:
        import torch.distributed as tdist

        for m in model.modules():
            if isinstance(m, kinds):
                for p in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                    tdist.broadcast(p.data, src=0)


def _init_whitening(cfg: TrainConfig, model: nn.Module, train_loader: Any, dist: DistInfo) -> None:
    """``whiten_images``: the model's whitening stem from the 2x2 patches of the first N training images
    (un-augmented, normalised as in training; the same on every rank)."""
    from ..data import TensorLoader
    from ..data.loader import normalize

    n = cfg.whiten_images
    if not n:
        return
    if not callable(getattr(model, "init_whitening", None)):
        raise ParameterError(f"{{whiten_images}} {n}: {type(model).__name__} has no whitening stem (init_whitening); "
                             f"use a model with one (airbench94_cifar) or set {{whiten_images}} 0", "whiten_images")
    if not isinstance(train_loader, TensorLoader):
        raise ParameterError("{whiten_images} needs the in-memory training data (a TensorLoader)", "whiten_images")
    images = normalize(train_loader.images[:n].cpu(), train_loader.mean, train_loader.std)
    model.init_whitening(images)
    if dist.is_primary:
        print(f"whitening stem initialised from the 2x2 patches of {images.shape[0]} training images")


def _init_weights(cfg: TrainConfig, model: nn.Module, dist: DistInfo) -> None:
    """``init_weights``: the weights of another checkpoint in the freshly built network (a warm start).

    Every tensor of the checkpoint must exist in the network with the same shape; the network's own tensors that
    the checkpoint lacks may only belong to its quantizers or neurons (a float ANN has no QCFS clips or QAC
    parameters), which keep their initialisation. Structure that has no parameters (pooling, the activation function) may differ: that is the
    point, e.g. a GELU/max-pool ANN warm-starting its QCFS/average-pool twin.
    """
    from ..metrics.monitors import is_spiking_neuron
    from ..quant.qac import QACQuantizer
    from ..quant.qcfs import QCFS
    from .checkpoint import CheckpointError, load_checkpoint, load_model_state

    ckpt = load_checkpoint(cfg.init_weights)
    check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")
    own = model.state_dict()
    missing = [k for k in own if k not in ckpt.model_state]
    # tensors a float network cannot have: those of the quantizers / neurons that replace its activations
    neuron_owned = {f"{name}.{k}" if name else k for name, m in model.named_modules()
                    if isinstance(m, (QCFS, QACQuantizer)) or is_spiking_neuron(m)
                    for k in m.state_dict()}
    not_neuron = [k for k in missing if k not in neuron_owned]
    if not_neuron:
        raise CheckpointError(f"init_weights {cfg.init_weights}: the checkpoint lacks {len(not_neuron)} tensor(s) "
                              f"of {type(model).__name__} that are not neuron parameters ({', '.join(not_neuron[:5])}"
                              f"{' ...' if len(not_neuron) > 5 else ''}): was it written for another model or "
                              f"model_kwargs?")
    state = dict(ckpt.model_state)
    for k in missing:
        state[k] = own[k]          # the clips keep their initialisation
    load_model_state(model, state, source=f"init_weights {cfg.init_weights}")
    if dist.is_primary:
        kept = f"; kept the initial {len(missing)} neuron parameter(s) it lacks" if missing else ""
        print(f"weights from {ckpt.path} ({len(ckpt.model_state)} tensors){kept}")


def _build_teacher(cfg: TrainConfig, info: Any, dist: DistInfo) -> nn.Module | None:
    """``distill_from``: the teacher network, rebuilt from its checkpoint (frozen, eval mode), after checking that it
    was trained on data of the same classes, input size and normalisation as this run's."""
    if cfg.distill_from is None:
        return None
    from ..data.provenance import check_data
    from .checkpoint import CheckpointError
    from .rebuild import read_checkpoint_meta, rebuild_model

    try:
        path, meta = read_checkpoint_meta(cfg.distill_from)
    except CheckpointError as exc:
        raise CheckpointError(f"distill_from (the teacher network): {exc}; give a trained run directory or "
                              f"checkpoint file") from None
    record = dict((meta.get("config") or {}).get("data_info") or {})
    if info is not None and record:
        check_data(record, info, None, where=f"training split; the teacher network of {path}")
    mine = cfg.data_info or {}
    for key in ("mean", "std"):
        # the teacher sees the student's input tensor: it must have been trained on the same normalisation
        theirs, ours = record.get(key), mine.get(key)
        if key in record and key in mine and ((theirs is None) != (ours is None) or (
                theirs is not None and any(abs(a - b) > 1e-6 for a, b in zip(theirs, ours)))):
            raise ParameterError(f"{{distill_from}} {path}: the teacher was trained on inputs normalised with "
                                 f"{key} {theirs}, this run uses {ours} (None: not normalised); distil from a network "
                                 f"trained on the same data and {{normalize}} setting", "distill_from", "normalize")
    teacher, name = rebuild_model(cfg.distill_from)
    check_finite_state(teacher.state_dict(), f"teacher checkpoint {path}")
    if dist.is_primary:
        print(f"distillation from {name} ({path}): weight {cfg.distill_weight}, temperature "
              f"{cfg.distill_temperature}")
    return teacher


def _init_clips(cfg: TrainConfig, model: nn.Module, train_loader: Any, dist: DistInfo) -> None:
    """QCFS from scratch or warm-started: clips ϑ from the data (``cfg.clip_init``), unless a threshold was given
    explicitly; a warm-started (``init_weights``) QAC network likewise gets its clips α, unless ``alpha`` was given."""
    from ..quant.clip_init import init_qac_alphas, init_qcfs_clips, parse_clip_init
    from ..quant.qac import QACQuantizer
    from ..quant.qcfs import QCFS

    q = parse_clip_init(cfg.clip_init)
    if q is not None and cfg.init_weights is not None and "alpha" not in cfg.neuron_arguments() and \
            any(isinstance(m, QACQuantizer) for m in model.modules()):
        # a QAC twin of a trained float ANN: its clips α from the trained network's pre-activations, as prepare_qat
        # does for the quantizers it makes from ReLUs
        batches = _clip_batches(cfg, train_loader, dist)
        model.to(dist.device)
        rows = init_qac_alphas(model, batches, q)
        _broadcast_params(model, (QACQuantizer,), dist)
        if dist.is_primary:
            print(f"QAC clips α from the data ({cfg.clip_init} of each layer's pre-activations; --neuron-kwargs "
                  f"alpha=X keeps X): " + " ".join(f"{r['after']:.3g}" for r in rows))
    if q is None or "threshold" in cfg.neuron_arguments() or not any(isinstance(m, QCFS) for m in model.modules()):
        return
    batches = _clip_batches(cfg, train_loader, dist)
    model.to(dist.device)
    rows = init_qcfs_clips(model, batches, q)
    _broadcast_params(model, (QCFS,), dist)
    if dist.is_primary:
        print(f"QCFS clips ϑ from the data ({cfg.clip_init} of each layer's pre-activations; --clip-init none "
              f"keeps {rows[0]['before']:g}): " + " ".join(f"{r['after']:.3g}" for r in rows))


def _prepare_qat(cfg: TrainConfig, model: nn.Module, train_loader: Any, dist: DistInfo) -> None:
    """``prepare_qat`` with ``cfg.prepare_qat``; then the clips α of the quantizers it made from ReLUs start at
    ``cfg.clip_init`` of their layer's pre-activations, unless α was given (``--alpha-init``, ``prepare_qat.alpha``)
    or the run resumes. Quantizers made from QCFS keep its ϑ (already from the data when trained from scratch) and
    quantizers loaded with ``--init-from`` keep their trained α."""
    from ..quant.clip_init import init_qac_alphas, parse_clip_init
    from ..quant.qac import QACQuantizer
    from ..quant.qat import prepare_qat

    report = prepare_qat(model, **cfg.prepare_qat)
    names = [r["name"] for r in report.replaced if r["old"] == "ReLU" and r["new"] == "QACQuantizer"]
    q = parse_clip_init(cfg.clip_init)
    if q is None or not names or "alpha" in cfg.prepare_qat or cfg.resume is not None:
        return
    batches = _clip_batches(cfg, train_loader, dist)
    model.to(dist.device)
    rows = init_qac_alphas(model, batches, q, names=names)
    _broadcast_params(model, (QACQuantizer,), dist)
    if dist.is_primary:
        print(f"QAC clips α from the data ({cfg.clip_init} of each layer's pre-activations, {len(rows)} quantizers; "
              f"--alpha-init X or --clip-init none keeps a fixed α, {rows[0]['before']:g} by default): "
              + " ".join(f"{r['after']:.3g}" for r in rows))


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
    # Rank 0 locks the run folder before touching it (--overwrite deletes files; log.jsonl is appended), so a
    # second run with the same --out is refused instead of interleaving with this one. RunLock also proves the
    # folder writable before any data is loaded.
    lock = RunLock(cfg.out) if dist.is_primary else contextlib.nullcontext()
    try:
        lock.__enter__()
        seed_everything(cfg.seed, dist.rank, cfg.deterministic)
        out = Path(cfg.out)
        resume_ckpt = None
        if cfg.resume is not None:
            resume_ckpt = load_checkpoint(out if cfg.resume == "auto" else cfg.resume)
        elif (out / "checkpoints" / "last.json").exists():
            if not cfg.overwrite:
                raise ParameterError(f"{out} already holds checkpoints of a run; pass {{resume}} to continue it, "
                                     f"{{overwrite}} to discard them, or choose another {{out}}",
                                     "resume", "overwrite", "out")
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
        elif info is not None and info.num_classes and cfg.num_classes < info.num_classes:
            raise ParameterError(f"{{num_classes}}={cfg.num_classes} but dataset {cfg.dataset!r} has "
                                 f"{info.num_classes} classes: labels >= {cfg.num_classes} would not fit the "
                                 f"classifier. Drop {{num_classes}} (it comes from the data) or set it to "
                                 f"{info.num_classes}", "num_classes")
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
                _resolve_freeze_bn(cfg, True)
            elif cfg.init_from is not None:
                model, model_name = _init_model(cfg)
            else:
                if cfg.num_classes is None:
                    raise ParameterError("the number of classes is unknown: set {num_classes}", "num_classes")
                model = build_model(cfg, cfg.num_classes, cfg.in_channels)
                shape = list(info.input_shape) if info is not None and info.input_shape else None
                if shape and "input_size" not in cfg.model_kwargs and \
                        list(getattr(model, "input_size", shape)) != shape:
                    # the data's image size (e.g. a 28x28 tree) sizes the classifier; recorded so every later step
                    # rebuilds the same network
                    cfg.model_kwargs = {**cfg.model_kwargs, "input_size": shape}
                    model = build_model(cfg, cfg.num_classes, cfg.in_channels)
                    if dist.is_primary:
                        print(f"note: {cfg.model} built for the data's {'x'.join(map(str, shape))} inputs "
                              f"(model_kwargs input_size={shape})")
                _init_whitening(cfg, model, train_loader, dist)
                if cfg.init_weights is not None:
                    _init_weights(cfg, model, dist)
                _init_clips(cfg, model, train_loader, dist)
            _resolve_freeze_bn(cfg, False)
            if cfg.prepare_qat is not None:
                _prepare_qat(cfg, model, train_loader, dist)
        if dist.is_primary:
            save_config(cfg, out, extra={"world_size": dist.world_size, "device": str(dist.device)})
        teacher = _build_teacher(cfg, info, dist)
        trainer = Trainer(model, train_loader, eval_loader, cfg, dist=dist, model_name=model_name, teacher=teacher)
        return trainer.fit(resume=resume_ckpt)
    finally:
        lock.__exit__(None, None, None)
        if owns_dist:
            cleanup_distributed()
