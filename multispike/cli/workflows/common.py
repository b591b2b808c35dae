"""Helpers shared by the command-line workflows: tables, JSON results, data loading, saving derived networks."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..._errors import ParameterError
from ..._text import format_table
from ..._text import percent as _pct
from ..._text import percent_curve as _curve
from ..._validate import check_positive_int
from ...data.provenance import DataSpec
from ...data.provenance import data_spec as _data_spec

__all__ = ["DataSpec", "data_spec", "static_loader", "prefix_accuracy", "save_network", "format_table"]


def _write_json(path: Path, data: Any) -> None:
    from ...train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")



def _check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    ck = out / "checkpoints"
    if ck.exists() and any(ck.iterdir()):
        if not overwrite:
            raise ParameterError(f"{out} already holds a checkpoint; choose another {{out}} or pass {{overwrite}}", "out",
                                 "overwrite")
        import shutil
        shutil.rmtree(ck)
    out.mkdir(parents=True, exist_ok=True)
    return out




def data_spec(cfg: Mapping[str, Any], dataset: str | None = None, data_dir: str | None = None,
              data_opts: Mapping[str, Any] | None = None, origin: str | None = None) -> DataSpec:
    """The data of a saved config, with ``dataset``/``data_dir``/``data_opts`` overrides (flags win); see
    :func:`multispike.data.provenance.data_spec`."""
    return _data_spec(cfg, dataset, data_dir, data_opts, origin=origin)


def static_loader(spec: DataSpec, split: str, *, limit: int | None = None, batch_size: int = 128,
                  stratified: bool = True, seed: int = 0, num_classes: int | None = None, log=None):
    """A :class:`~multispike.data.TensorLoader` over one split of an image dataset (no augmentation, no shuffle).

    The split is checked against the network's data record (classes, input shape; and ``num_classes``, the
    network's outputs) before anything else runs; ``log`` gets the one-line description of the data.

    Args:
        limit: a seeded class-balanced subset of ``limit`` images (chosen before decoding), or with
            ``stratified=False`` the first ``limit``.

    Returns:
        ``(loader, dataset info)``.
    """
    from ...data import TensorLoader
    from ...data.provenance import load_split

    if limit is not None:
        limit = check_positive_int(limit, "limit", fix="Give a number of samples >= 1.")
    images, labels, info = load_split(spec, split, limit=limit if stratified else None, seed=seed,
                                      num_classes=num_classes, log=log)
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
        raise ValueError(f"dataset {spec.dataset!r} is not an image dataset (uint8 [N, C, H, W]); this command "
                         f"converts and evaluates image classifiers - for event data use `multispike events-train`")
    if limit is not None and not stratified:
        images, labels = images[:limit], labels[:limit]
    mean, std = (info.mean, info.std) if spec.normalize else (None, None)
    return TensorLoader(images, labels, batch_size, shuffle=False, mean=mean, std=std), info


def prefix_accuracy(model: nn.Module, data: Iterable, *, max_batches: int | None = None) -> dict:
    """Top-1 accuracy of the cumulative-mean readout at every output prefix ``t`` (and the time-mean CE).

    The package's one prefix evaluator, :func:`multispike.metrics.prefix_accuracy`; returns
    ``{"acc", "acc_per_t", "samples", "loss", "time_s"}``.
    """
    from ...metrics.prefix import prefix_accuracy as _prefix_accuracy

    res = _prefix_accuracy(model, data, max_batches=max_batches)
    res.pop("correct_per_t")
    return res


# ----------------------------------------------------------------------------------------------------
# Saving a network as a rebuildable checkpoint
# ----------------------------------------------------------------------------------------------------
def _clean_config(cfg: Mapping[str, Any], **updates: Any) -> dict:
    """The source run's config as the config of a derived network (no training references left)."""
    out = dict(cfg)
    for key in ("init_from", "prepare_qat", "ann_checkpoint", "convert_hook", "resume"):
        if key in out:
            out[key] = None
    out.update(mode="snn", overwrite=False)
    out.update(updates)
    return out


def _data_config(spec: DataSpec, info: Any) -> dict:
    """The data keys of a derived network's config: what this step used, and the record it was checked against
    (kept from the source; written from the data when the source predates records)."""
    from ...data.provenance import data_record

    return {"dataset": spec.dataset, "data_dir": spec.data_dir, "dataset_kwargs": dict(spec.dataset_kwargs),
            "normalize": spec.normalize, "data_info": spec.record or data_record(info, None, spec.normalize)}


def save_network(out: Path, model: nn.Module, *, name: str, config: Mapping[str, Any], source_desc: Mapping[str, Any],
                 source_checkpoint: str, steps: list[dict], extra: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` as ``<out>/checkpoints`` with its rebuild recipe; returns the checkpoint JSON path.

    The recipe is ``{"version", "source": source_desc, "source_checkpoint", "steps"}``; the rebuild check
    (:func:`multispike.train.rebuild.rebuild_model`) runs right away, so a network that cannot be rebuilt is an
    error here rather than at load time.
    """
    from ...train.checkpoint import load_checkpoint, save_checkpoint
    from ...convert.recipe import RECIPE_VERSION, structure_snapshot
    from ...train.rebuild import rebuild_model

    recipe = {"version": RECIPE_VERSION, "source": dict(source_desc), "source_checkpoint": str(source_checkpoint),
              "steps": steps}
    meta = {"model": name, "config": dict(config), "conversion": recipe, "structure": structure_snapshot(model),
            "torch_version": torch.__version__}
    meta.update(extra or {})
    path = save_checkpoint(out / "checkpoints", model, None, meta, epoch=0, step=0, keep=0)
    rebuilt, _ = rebuild_model(load_checkpoint(path))   # fail now, not when someone loads it
    mine, theirs = model.state_dict(), rebuilt.state_dict()
    if set(mine) != set(theirs):
        raise RuntimeError(f"save_network: the rebuilt network's state keys differ from the saved ones "
                           f"({sorted(set(mine) ^ set(theirs))[:5]})")
    return path


def _load_source(checkpoint: str | os.PathLike):
    """``(checkpoint, model in eval mode, name, descriptor)``."""
    from ...train.checkpoint import load_checkpoint
    from ...train.rebuild import describe_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    from ...train.guards import check_finite_state
    check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")   # converting a diverged run gives garbage
    model, name = rebuild_model(ckpt)
    return ckpt, model, name, describe_checkpoint(ckpt.meta, ckpt.path)


def _quantizers(model: nn.Module) -> tuple[list[str], list[str]]:
    from ...quant.qac import QACQuantizer
    from ...quant.qcfs import QCFS

    qcfs = [n for n, m in model.named_modules() if isinstance(m, QCFS)]
    qac = [n for n, m in model.named_modules() if isinstance(m, QACQuantizer)]
    return qcfs, qac


def _example_shape(model: nn.Module, info: Any) -> list[int]:
    size = getattr(model, "input_size", None) or getattr(info, "input_shape", None)
    if not size:
        raise ValueError(f"cannot tell the input size of {type(model).__name__}; it needs an input_size attribute")
    return [2, *[int(s) for s in size]]


def _timestep_rows(model: nn.Module) -> tuple[list[dict], dict | None]:
    """Per-layer T_l rows and the average T of a mixed/uniform SNN or QAT model (``([], None)`` if it has none)."""
    from ...quant.qac import average_timestep, quantizer_summary

    rows = quantizer_summary(model)
    if not rows:
        return [], None
    avg = average_timestep(model)
    return rows, {"plain": avg.plain, "op_weighted": avg.op_weighted}


