"""Conversion recipes: the recorded steps that turn one network into another, and their replay.

A conversion (``multispike convert``, ``calibrate``, ``reparam``, or the Python calls behind them) records each
step it made as a plain dict - ``{"op": "convert_qcfs_to_lmht", "args": {...}}`` - and :func:`run_step` is the one
function that executes such a step, both when the conversion runs and when a saved converted network is rebuilt
(:func:`multispike.train.rebuild.rebuild_model`). Sharing the function is what makes a rebuild repeat exactly the
calls that made the checkpoint.

A conversion also sets plain attributes that are not tensors (a layer's ``T_l``, LM-HT's first-layer
``in_scale``, the alignment mode); :func:`structure_snapshot` records them with the module tree and
:func:`restore_structure` checks the tree and sets them back, refusing anything but plain public data
attributes (a checkpoint is data and must not be able to replace behaviour).

This module sits in :mod:`multispike.convert` because every step is a conversion; it imports no training code, so
the trainer (which rebuilds ``--init-from`` checkpoints) can depend on it without a cycle.

Example::

    step = {"op": "convert_qcfs_to_if", "args": {"T": 4}}
    snn, report = run_step(qcfs_ann, step)
    snapshot = structure_snapshot(snn)                 # JSON-ready
    again, _ = run_step(untrained_copy_of_the_ann, step); restore_structure(again, snapshot)
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .._errors import CheckpointError

__all__ = ["RECIPE_VERSION", "STEP_OPS", "run_step", "structure_snapshot", "restore_structure", "model_timesteps",
           "StructureOnlyData", "input_shape"]

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



def model_timesteps(model: nn.Module) -> int | None:
    """The T a model is fed at (its DirectEncoder's T, else ``model.T``); None if it has neither."""
    from ..layers import DirectEncoder

    enc = getattr(model, "encoder", None)
    if isinstance(enc, DirectEncoder):
        return int(enc.T)
    T = getattr(model, "T", None)
    return int(T) if isinstance(T, int) else None


class StructureOnlyData:
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


def input_shape(model: nn.Module, batch: int = 2) -> tuple[int, ...]:
    size = getattr(model, "input_size", None)
    if not size:
        raise CheckpointError(f"cannot rebuild a conversion of {type(model).__name__}: it does not declare its "
                              f"input_size")
    return (batch, *tuple(size))


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
    from ..quant.qat import prepare_qat

    report = prepare_qat(model, **args)
    return model, report


def _step_qcfs_to_if(model, args, step, data):
    from .lmht import convert_qcfs_to_if

    net, report = convert_qcfs_to_if(model, return_report=True, **args)
    _set_T(net, args.get("T"))
    return net, report


def _step_qcfs_to_lmht(model, args, step, data):
    from .lmht import convert_qcfs_to_lmht

    net, report = convert_qcfs_to_lmht(model, return_report=True, **args)
    _set_T(net, args.get("T"))
    return net, report


def _step_convert_to_snn(model, args, step, data):
    from .converter import convert_to_snn

    if args.get("threshold", "qcfs") != "qcfs" and data is None:
        data = StructureOnlyData(input_shape(model))
    return convert_to_snn(model, calibration_data=data, **args)


def _step_mixed(model, args, step, data):
    from .mixed_timestep import to_mixed_timestep_snn

    return to_mixed_timestep_snn(model, example_input=_example(model, step), **args)


def _step_uniform(model, args, step, data):
    from .mixed_timestep import to_uniform_snn

    return to_uniform_snn(model, example_input=_example(model, step), **args)


def _step_reparam(model, args, step, data):
    from .lmht import reparameterize_lmht

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
