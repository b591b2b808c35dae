"""Rebuild the exact module tree of any multispike checkpoint, then load its weights.

A checkpoint stores tensors only (safetensors) plus JSON. A plain training run is rebuilt with
``create_model`` from its saved config; but converted networks (IF, LM-HT, mixed-timestep, reparameterised
IF), QAT-prepared models, hybrid fine-tunes and runs started ``--init-from`` another checkpoint have a
different module tree and plain attributes that are not tensors (a layer's ``T_l``, LM-HT's first-layer
``in_scale``, the alignment mode...). They are rebuilt from a **model descriptor**:

* ``{"kind": "zoo", "model", "config"}`` - ``create_model`` from the config, then ``prepare_qat`` if the
  config has ``prepare_qat``;
* ``{"kind": "init_from", "model", "config", "init": <descriptor>}`` - the structure of another checkpoint
  (``--init-from``), then ``prepare_qat`` if set;
* ``{"kind": "hybrid", "model", "config", "ann": <descriptor>}`` - the ANN, then the config's
  ``convert_hook`` (fed a dummy batch marked ``structure_only`` where it wants data: only values depend on data,
  not structure, and the hook skips its calibration);
* ``{"kind": "converted", "model", "config", "conversion": {"source": <descriptor>, "steps": [...]},
  "structure": <snapshot>}`` - the source network, then the recorded conversion steps
  (:func:`multispike.convert.recipe.run_step`, the same function the conversion itself ran), then the plain
  attributes of the :func:`~multispike.convert.recipe.structure_snapshot`.

The weights are loaded afterwards, so nothing that depends on the trained values (thresholds from data,
scaled biases, calibrated membranes) has to be recomputed. A converted checkpoint embeds its source's
descriptor, so it can be rebuilt without the source checkpoint's files.

Example::

    model, name = rebuild_model("runs/convert_lmht")   # what `multispike eval --checkpoint` does
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from ..convert import recipe as _recipe
from ..convert.recipe import StructureOnlyData, input_shape
from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_model_state, resolve_checkpoint_path,
                         verify_meta)

__all__ = ["describe_checkpoint", "needs_rebuild", "build_structure", "check_hooks", "rebuild_model",
           "read_checkpoint_meta", "config_from_dict", "create_from_config"]

# Moved to multispike.convert.recipe (the conversion steps are conversion code; this module only describes and
# rebuilds training runs). Still importable from here, with a DeprecationWarning.
_MOVED_TO_RECIPE = ("RECIPE_VERSION", "STEP_OPS", "run_step", "structure_snapshot", "restore_structure",
                    "model_timesteps")


def __getattr__(name: str):
    if name in _MOVED_TO_RECIPE:
        import warnings

        warnings.warn(f"multispike.train.rebuild.{name} moved to multispike.convert.recipe.{name}; import it from "
                      f"there", DeprecationWarning, stacklevel=2)
        return getattr(_recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------------
# Helpers on saved configs
# ----------------------------------------------------------------------------------------------------
def config_from_dict(cfg: Mapping[str, Any]):
    """A :class:`~multispike.train.config.TrainConfig` from a saved ``config.json`` dict (unknown keys dropped,
    no validation: the run it describes was valid when it was written)."""
    from .config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in cfg.items() if k in names})


def create_from_config(name: str, cfg: Mapping[str, Any]) -> nn.Module:
    """``create_model`` with the model, neuron, T and keyword arguments of a saved config."""
    from ..models import create_model

    nk = dict(cfg.get("neuron_kwargs") or {})
    for key in ("levels", "lanes", "v_threshold"):
        if cfg.get(key) is not None:
            nk[key] = cfg[key]
    return create_model(name, num_classes=cfg.get("num_classes") or 10, neuron=cfg.get("neuron", "relu"),
                        T=cfg.get("timesteps", 1), in_channels=cfg.get("in_channels"), neuron_kwargs=nk,
                        **(cfg.get("model_kwargs") or {}))



def read_checkpoint_meta(path: str | os.PathLike) -> tuple[Path, dict]:
    """``(json path, metadata)`` of a checkpoint without reading (or verifying) its tensors; the metadata's format,
    version and JSON digest are checked (:func:`~multispike.train.checkpoint.verify_meta`)."""
    json_path = resolve_checkpoint_path(path)
    try:
        meta = json.loads(json_path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON ({exc})") from exc
    return json_path, verify_meta(meta, json_path)


def _resolve_reference(ref: str, owner: Path, what: str) -> Path:
    """A checkpoint path recorded in a config: as given (relative to the working directory), else relative to
    the run directory that recorded it."""
    p = Path(ref)
    if p.exists():
        return p
    run_dir = owner.parent.parent if owner.parent.name == "checkpoints" else owner.parent
    alt = run_dir / ref
    if alt.exists():
        return alt
    raise CheckpointError(f"{owner} was made from {what} {ref!r}, which does not exist (looked in the working "
                          f"directory and in {run_dir}); its structure is rebuilt from that checkpoint, so restore "
                          f"it there or run from the directory the run was started in")


# ----------------------------------------------------------------------------------------------------
# Descriptors
# ----------------------------------------------------------------------------------------------------
def needs_rebuild(meta: Mapping[str, Any]) -> bool:
    """Whether ``create_model(config)`` alone would get the checkpoint's module tree wrong."""
    cfg = meta.get("config") or {}
    return bool(meta.get("conversion") or cfg.get("init_from") or cfg.get("prepare_qat") is not None
                or cfg.get("mode") == "hybrid")


def describe_checkpoint(meta: Mapping[str, Any], path: str | os.PathLike | None = None) -> dict:
    """The self-contained model descriptor (module docstring) of a checkpoint's metadata.

    ``init_from`` and hybrid ``ann_checkpoint`` references are read (metadata only) and embedded.
    """
    cfg = dict(meta.get("config") or {})
    name = meta.get("model") or cfg.get("model")
    here = Path(path) if path is not None else Path(".")
    if meta.get("conversion"):
        conv = meta["conversion"]
        if int(conv.get("version", 0)) > _recipe.RECIPE_VERSION:
            raise CheckpointError(f"{here}: conversion recipe version {conv.get('version')} is newer than this "
                                  f"multispike ({_recipe.RECIPE_VERSION}); upgrade multispike")
        if "structure" not in meta:
            raise CheckpointError(f"{here}: a converted checkpoint without its structure snapshot; re-run the "
                                  f"conversion")
        return {"kind": "converted", "model": name, "config": cfg, "conversion": conv, "structure": meta["structure"]}
    if not name:
        raise CheckpointError(f"checkpoint {here} does not record its model name; it cannot be rebuilt")
    if cfg.get("mode") == "hybrid":
        if not cfg.get("ann_checkpoint") or not cfg.get("convert_hook"):
            raise CheckpointError(f"{here}: hybrid run without ann_checkpoint/convert_hook in its config")
        # Refuse an unknown hook before anything else is read: a checkpoint names hooks, never code to import.
        _allowed_hook(cfg["convert_hook"], here)
        ann_path, ann_meta = read_checkpoint_meta(_resolve_reference(cfg["ann_checkpoint"], here, "the ANN checkpoint"))
        return {"kind": "hybrid", "model": name, "config": cfg, "ann": describe_checkpoint(ann_meta, ann_path)}
    if cfg.get("init_from"):
        init_path, init_meta = read_checkpoint_meta(_resolve_reference(cfg["init_from"], here, "--init-from"))
        return {"kind": "init_from", "model": name, "config": cfg, "init": describe_checkpoint(init_meta, init_path)}
    return {"kind": "zoo", "model": name, "config": cfg}


def _allowed_hook(spec: Any, where: Any):
    """The registered conversion hook ``spec`` names (never an import of a name read from a checkpoint)."""
    from .hooks import resolve_convert_hook

    return resolve_convert_hook(spec, allow_import=False, source=f"checkpoint {where}")


def check_hooks(desc: Mapping[str, Any], where: Any = "checkpoint") -> None:
    """Raise :class:`~multispike.train.hooks.UntrustedHookError` if any (nested) descriptor names a conversion hook
    that is not on the allow-list; imports nothing."""
    from .hooks import is_allowed_hook

    stack = [desc]
    while stack:
        d = stack.pop()
        if not isinstance(d, Mapping):
            raise CheckpointError(f"checkpoint {where}: malformed model descriptor ({type(d).__name__})")
        if d.get("kind") == "hybrid":
            hook = (d.get("config") or {}).get("convert_hook")
            if not is_allowed_hook(hook):
                _allowed_hook(hook, where)   # raises with the full message
        for key in ("ann", "init"):
            if key in d:
                stack.append(d[key])
        if isinstance(d.get("conversion"), Mapping) and "source" in d["conversion"]:
            stack.append(d["conversion"]["source"])


def build_structure(desc: Mapping[str, Any]) -> nn.Module:
    """The module tree a descriptor describes, with untrained (random or converted-from-random) values."""
    kind = desc.get("kind")
    cfg = desc.get("config") or {}
    if kind == "converted":
        conv = desc["conversion"]
        model = build_structure(conv["source"])
        for step in conv.get("steps", []):
            model, _ = _recipe.run_step(model, step, data=None)
        _recipe.restore_structure(model, desc["structure"], source=f"converted model {desc.get('model')!r}")
        return model
    if kind == "hybrid":
        from .hybrid import call_convert_hook

        hook = _allowed_hook(cfg.get("convert_hook"), f"hybrid model {desc.get('model')!r}")
        ann = build_structure(desc["ann"])
        model = call_convert_hook(hook, ann, config_from_dict(cfg), StructureOnlyData(input_shape(ann)))
    elif kind == "init_from":
        from .hybrid import convert_init_model

        model, _ = convert_init_model(build_structure(desc["init"]), config_from_dict(cfg))
    elif kind == "zoo":
        model = create_from_config(desc["model"], cfg)
    else:
        raise CheckpointError(f"unknown model descriptor kind {kind!r}")
    if cfg.get("prepare_qat") is not None:
        from ..quant.qat import prepare_qat

        prepare_qat(model, **cfg["prepare_qat"])
    return model


def rebuild_model(checkpoint: Checkpoint | str | os.PathLike, *, load_weights: bool = True
                  ) -> tuple[nn.Module, str]:
    """Rebuild a checkpoint's network (see the module docstring) and load its weights.

    Returns:
        ``(model, model name)``; the model is in eval mode.

    Raises:
        CheckpointError: missing references, a structure that no longer matches, or weights that do not fit.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    desc = describe_checkpoint(ckpt.meta, ckpt.path)
    check_hooks(desc, ckpt.path)   # before any module is built: a refused checkpoint has no side effect
    model = build_structure(desc)
    if load_weights:
        load_model_state(model, ckpt.model_state, source=f"checkpoint {ckpt.path}")
    model.eval()
    return model, desc.get("model") or type(model).__name__
