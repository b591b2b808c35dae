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
  "structure": <snapshot>}`` - the source network, then the recorded conversion steps (:func:`run_step`, the
  same function the conversion itself ran), then the plain attributes of the :func:`structure_snapshot`.

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

import torch
from torch import nn

from .checkpoint import (Checkpoint, CheckpointError, load_checkpoint, load_model_state, resolve_checkpoint_path,
                         verify_meta)

__all__ = ["RECIPE_VERSION", "STEP_OPS", "structure_snapshot", "restore_structure", "describe_checkpoint",
           "needs_rebuild", "build_structure", "check_hooks", "rebuild_model", "run_step", "read_checkpoint_meta",
           "model_timesteps", "config_from_dict", "create_from_config"]

RECIPE_VERSION = 1
_PLAIN = (bool, int, float, str, type(None))


# ----------------------------------------------------------------------------------------------------
# Structure snapshots
# ----------------------------------------------------------------------------------------------------
def _qualname(m: nn.Module) -> str:
    cls = type(m)
    return f"{cls.__module__}.{cls.__qualname__}"


def structure_snapshot(model: nn.Module) -> dict:
    """Module names and classes in order, plus every plain (bool/int/float/str/None) public attribute.

    Taken after ``reset_net`` so no per-sequence state is recorded. JSON-ready.
    """
    from ..neurons.base import reset_net

    reset_net(model)
    modules, attributes = [], {}
    for name, m in model.named_modules():
        modules.append([name, _qualname(m)])
        plain = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"
                 and isinstance(v, _PLAIN)}
        if plain:
            attributes[name] = plain
    return {"modules": modules, "attributes": attributes}


def restore_structure(model: nn.Module, snapshot: Mapping[str, Any], source: str = "checkpoint") -> None:
    """Check that ``model`` has the snapshot's module tree and set the snapshot's plain attributes.

    Raises:
        CheckpointError: a module is missing, extra or of another class (the conversion code changed since the
            checkpoint was written, or the descriptor does not belong to it).
    """
    from ..neurons.base import reset_net

    own = [[n, _qualname(m)] for n, m in model.named_modules()]
    saved = [list(x) for x in snapshot.get("modules", [])]
    if own != saved:
        for i, (a, b) in enumerate(zip(own, saved)):
            if a != b:
                raise CheckpointError(f"{source}: the rebuilt network differs from the saved one at module #{i}: "
                                      f"rebuilt {a[0]!r} ({a[1]}), saved {b[0]!r} ({b[1]}). The conversion code "
                                      f"changed since the checkpoint was written; re-run the conversion.")
        raise CheckpointError(f"{source}: the rebuilt network has {len(own)} modules, the saved one {len(saved)}; "
                              f"re-run the conversion with this version of multispike")
    for name, attrs in (snapshot.get("attributes") or {}).items():
        try:
            m = model.get_submodule(name) if name else model
        except AttributeError as exc:
            raise CheckpointError(f"{source}: the structure snapshot names a module {name!r} the network does not "
                                  f"have") from exc
        if not isinstance(attrs, Mapping):
            raise CheckpointError(f"{source}: malformed structure snapshot for module {name!r}")
        for key, value in attrs.items():
            _check_plain_attribute(m, name, key, value, source)
            setattr(m, key, value)
    reset_net(model)


def _check_plain_attribute(m: nn.Module, name: str, key: Any, value: Any, source: str) -> None:
    """A snapshot may only set plain public data attributes: never a method, property, parameter, buffer,
    submodule or private attribute (a checkpoint must not be able to replace behaviour)."""
    bad = None
    if not isinstance(key, str) or not key.isidentifier() or key.startswith("_") or key == "training":
        bad = "is not a public attribute name"
    elif not isinstance(value, _PLAIN):
        bad = f"has a value of type {type(value).__name__} (only bool/int/float/str/None are restored)"
    elif key in m._parameters or key in m._buffers or key in m._modules:
        bad = "is a parameter, buffer or submodule"
    elif hasattr(type(m), key) and not isinstance(getattr(type(m), key), _PLAIN):
        bad = "would replace a method or property of the class"
    elif key in vars(m) and not isinstance(vars(m)[key], _PLAIN):
        bad = f"would replace a {type(vars(m)[key]).__name__}"
    if bad:
        raise CheckpointError(f"{source}: the structure snapshot sets {name or '<root>'}.{key!s}, which {bad}; the "
                              f"checkpoint is corrupt or was not written by multispike")


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


def model_timesteps(model: nn.Module) -> int | None:
    """The T a model is fed at (its DirectEncoder's T, else ``model.T``); None if it has neither."""
    from ..layers import DirectEncoder

    enc = getattr(model, "encoder", None)
    if isinstance(enc, DirectEncoder):
        return int(enc.T)
    T = getattr(model, "T", None)
    return int(T) if isinstance(T, int) else None


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
        if int(conv.get("version", 0)) > RECIPE_VERSION:
            raise CheckpointError(f"{here}: conversion recipe version {conv.get('version')} is newer than this "
                                  f"multispike ({RECIPE_VERSION}); upgrade multispike")
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


class _DummyData:
    """One batch of zeros in a model's input format, for conversion steps that read data (their data-dependent
    values are overwritten by the checkpoint's weights). ``structure_only`` tells a hybrid hook so
    (:func:`~multispike.train.hybrid.is_structure_only`): it builds modules and skips calibration."""

    structure_only = True

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.x = torch.zeros(shape)
        self.y = torch.zeros(shape[0], dtype=torch.int64)

    def __iter__(self):
        yield self.x, self.y

    def __len__(self) -> int:
        return 1


def _input_shape(model: nn.Module, batch: int = 2) -> tuple[int, ...]:
    size = getattr(model, "input_size", None)
    if not size:
        raise CheckpointError(f"cannot rebuild a conversion of {type(model).__name__}: it does not declare its "
                              f"input_size")
    return (batch, *tuple(size))


def build_structure(desc: Mapping[str, Any]) -> nn.Module:
    """The module tree a descriptor describes, with untrained (random or converted-from-random) values."""
    kind = desc.get("kind")
    cfg = desc.get("config") or {}
    if kind == "converted":
        conv = desc["conversion"]
        model = build_structure(conv["source"])
        for step in conv.get("steps", []):
            model, _ = run_step(model, step, data=None)
        restore_structure(model, desc["structure"], source=f"converted model {desc.get('model')!r}")
        return model
    if kind == "hybrid":
        from .hybrid import call_convert_hook

        hook = _allowed_hook(cfg.get("convert_hook"), f"hybrid model {desc.get('model')!r}")
        ann = build_structure(desc["ann"])
        model = call_convert_hook(hook, ann, config_from_dict(cfg), _DummyData(_input_shape(ann)))
    elif kind == "init_from":
        from .hybrid import convert_init_model

        model, _ = convert_init_model(build_structure(desc["init"]), config_from_dict(cfg))
    elif kind == "zoo":
        model = create_from_config(desc["model"], cfg)
    else:
        raise CheckpointError(f"unknown model descriptor kind {kind!r}")
    if cfg.get("prepare_qat") is not None:
        from ..quant.qac import prepare_qat

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


# ----------------------------------------------------------------------------------------------------
# Conversion steps (shared by the conversions themselves and by the rebuild)
# ----------------------------------------------------------------------------------------------------
def _set_T(model: nn.Module, T: int | None) -> None:
    if T is not None and hasattr(model, "set_timesteps"):
        model.set_timesteps(int(T))


def _example(model: nn.Module, step: Mapping[str, Any]) -> torch.Tensor | None:
    shape = step.get("example_shape")
    return None if shape is None else torch.zeros(tuple(shape))


def run_step(model: nn.Module, step: Mapping[str, Any], data: Any = None) -> tuple[nn.Module, Any]:
    """Apply one recorded conversion step; returns ``(new model, the conversion function's report or None)``.

    The input model may be modified. The conversion workflows call this too, so a rebuild repeats exactly
    the calls that made the checkpoint.

    ``data`` (batches of inputs or ``(x, y)``) is used by the steps that read activations (``convert_to_snn``
    with a percentile threshold); ``None`` feeds one batch of zeros - enough to reproduce the structure.

    Steps (``step["op"]``, arguments in ``step["args"]``): ``prepare_qat``, ``convert_qcfs_to_if``,
    ``convert_qcfs_to_lmht``, ``convert_to_snn``, ``to_mixed_timestep_snn``, ``to_uniform_snn``,
    ``reparameterize_lmht``, ``calibrate`` (re-shapes the calibrated ``v_init``/``v_threshold`` buffers),
    ``set_timesteps``.
    """
    op = step.get("op")
    args = dict(step.get("args") or {})
    if op not in STEP_OPS:
        raise CheckpointError(f"unknown conversion step {op!r}; known: {', '.join(STEP_OPS)}")
    return STEP_OPS[op](model, args, step, data)


def _step_prepare_qat(model, args, step, data):
    from ..quant.qac import prepare_qat

    report = prepare_qat(model, **args)
    return model, report


def _step_qcfs_to_if(model, args, step, data):
    from ..convert.lmht import convert_qcfs_to_if

    net, report = convert_qcfs_to_if(model, return_report=True, **args)
    _set_T(net, args.get("T"))
    return net, report


def _step_qcfs_to_lmht(model, args, step, data):
    from ..convert.lmht import convert_qcfs_to_lmht

    net, report = convert_qcfs_to_lmht(model, return_report=True, **args)
    _set_T(net, args.get("T"))
    return net, report


def _step_convert_to_snn(model, args, step, data):
    from ..convert.converter import convert_to_snn

    if args.get("threshold", "qcfs") != "qcfs" and data is None:
        data = _DummyData(_input_shape(model))
    return convert_to_snn(model, calibration_data=data, **args)


def _step_mixed(model, args, step, data):
    from ..convert.mixed_timestep import to_mixed_timestep_snn

    return to_mixed_timestep_snn(model, example_input=_example(model, step), **args)


def _step_uniform(model, args, step, data):
    from ..convert.mixed_timestep import to_uniform_snn

    return to_uniform_snn(model, example_input=_example(model, step), **args)


def _step_reparam(model, args, step, data):
    from ..convert.lmht import reparameterize_lmht

    model.eval()
    net, report = reparameterize_lmht(model, **args)
    _set_T(net, model_timesteps(net))
    return net, report


def _step_calibrate(model, args, step, data):
    # Calibration learns v(0) per channel: the buffers change shape, so give them the recorded shapes before the
    # weights are loaded.
    for name, shapes in (args.get("buffer_shapes") or {}).items():
        m = model.get_submodule(name)
        for attr, shape in shapes.items():
            old = getattr(m, attr)
            new = torch.zeros(tuple(shape), dtype=old.dtype, device=old.device)
            if isinstance(old, nn.Parameter):
                setattr(m, attr, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                m.register_buffer(attr, new)
    return model, None


def _step_set_timesteps(model, args, step, data):
    _set_T(model, args["T"])
    return model, None


STEP_OPS = {
    "prepare_qat": _step_prepare_qat,
    "convert_qcfs_to_if": _step_qcfs_to_if,
    "convert_qcfs_to_lmht": _step_qcfs_to_lmht,
    "convert_to_snn": _step_convert_to_snn,
    "to_mixed_timestep_snn": _step_mixed,
    "to_uniform_snn": _step_uniform,
    "reparameterize_lmht": _step_reparam,
    "calibrate": _step_calibrate,
    "set_timesteps": _step_set_timesteps,
}
