"""Conversion hooks for ``mode: hybrid`` (ANN checkpoint -> SNN -> fine-tune).

A hook is any callable ``hook(ann_model, config)`` or ``hook(ann_model, config, train_loader)`` returning the SNN;
``--convert-hook package.module:function`` names it. Rebuilding a saved hybrid run (``multispike eval``,
:func:`~multispike.train.rebuild.rebuild_model`) calls the hook again on a placeholder loader whose
``structure_only`` attribute is true (see :func:`is_structure_only`): only the module tree matters there, since
the checkpoint's weights replace every data-driven value, so a hook should skip its calibration. The two paper
recipes ship here:

* :func:`lmht_hybrid` - LM-HT (algorithms.md §2.6): every QCFS of the ANN becomes an LM-HT neuron with
  ``θ = ϑ``, ``v(0) = θ/2``, uniform T-GIM, ``λ = 1`` and ``in_scale = L`` on the first spiking layer
  (:func:`multispike.convert.lmht.convert_qcfs_to_lmht`). ``L = config.levels``, ``T = config.timesteps``.
  By default the biases after the first spiking layer are scaled by L (``hybrid_bias_scale: exact``), so
  fine-tuning starts from the network that equals the QCFS ANN with L·T levels; ``hybrid_bias_scale: code``
  (or 1) is LMHT-C's ×1 conversion. :func:`convert_init_model` applies the same conversion to a QCFS ANN given
  to ``--init-from`` with ``--neuron lmht``.
* :func:`mlif_hybrid` - one-hot M-LIF (§5.4, §5.6): BN folded, ReLU (or LogQuant) -> OneHotMLIF, thresholds and
  payload scales initialised layer by layer on training batches
  (:func:`multispike.convert.mlif_init.mlif_hybrid_init`; default ``threshold_init: logquant``, the exact
  log-quantized mapping, θ = α·2^{1/2−S} and a spike worth √2·θ·2^s with α at P99.7 of each layer's rectified
  input; ``percentile`` is the paper text's P90 rule). ``S = config.lanes``, ``T = config.timesteps``; dropout
  ``p`` goes to the architecture's own dropout modules.

Options of each converter are read from ``config.neuron_kwargs`` (only the keys the converter accepts; an unknown
key is an error naming the accepted ones).
"""
from __future__ import annotations

import inspect
from typing import Any, Iterable

from torch import nn

from .._errors import ParameterError
from .config import TrainConfig

__all__ = ["lmht_hybrid", "mlif_hybrid", "call_convert_hook", "convert_init_model", "is_structure_only"]

_LMHT_OPTIONS = ("hybrid_bias_scale", "tgim", "learnable_leak", "detach_temporal", "detach_reset", "surrogate_width",
                 "backend")
_MLIF_OPTIONS = ("threshold_init", "q", "scale", "num_batches", "dropout", "neuron_dropout", "payload_scale",
                 "fold_batchnorm")


def _options(cfg: TrainConfig, allowed: tuple[str, ...], owner: str, passthrough: bool = False) -> tuple[dict, dict]:
    """Split ``cfg.neuron_kwargs`` into converter options and (for M-LIF) neuron keywords."""
    own, rest = {}, {}
    for key, value in cfg.neuron_kwargs.items():
        if key in ("levels", "lanes"):
            continue
        if key in allowed:
            own[key] = value
        elif passthrough:
            rest[key] = value
        else:
            raise ValueError(f"{owner}: neuron_kwargs key {key!r} is not a conversion option; accepted: "
                             f"{', '.join(allowed)}")
    return own, rest


def is_structure_only(train_loader: Any) -> bool:
    """True when ``train_loader`` is a checkpoint rebuild's placeholder (an attribute ``structure_only = True``):
    its batches are zeros, and a hook should build the modules without data-driven calibration."""
    return bool(getattr(train_loader, "structure_only", False))


def _set_T(snn: nn.Module, T: int) -> nn.Module:
    if hasattr(snn, "set_timesteps"):
        snn.set_timesteps(T)
    return snn


def lmht_hybrid(ann: nn.Module, cfg: TrainConfig) -> nn.Module:
    """QCFS ANN -> LM-HT SNN with ``L = cfg.levels`` and ``T = cfg.timesteps`` (LM-HT hybrid training, §2.6)."""
    from ..convert.lmht import convert_qcfs_to_lmht

    levels = cfg.neuron_arguments().get("levels")
    if levels is None:
        raise ParameterError("lmht_hybrid needs the LM-HT level count: set {levels} L (e.g. 2)", "levels")
    opts, _ = _options(cfg, _LMHT_OPTIONS, "lmht_hybrid")
    snn = convert_qcfs_to_lmht(ann, levels=int(levels), T=cfg.timesteps, **opts)
    return _set_T(snn, cfg.timesteps)


def convert_init_model(model: nn.Module, cfg: TrainConfig) -> tuple[nn.Module, str | None]:
    """``--init-from`` a QCFS ANN with ``--neuron lmht``: convert it with :func:`lmht_hybrid` (exact ×L bias
    scale unless ``neuron_kwargs`` says otherwise). Returns ``(model, description)``; the model is returned
    unchanged (description ``None``) when the neuron is not ``lmht`` or the network is not a QCFS ANN (e.g. it is
    already an LM-HT net from ``multispike convert --to lmht``).

    The training runner calls this after loading the checkpoint and the rebuild repeats it, so the fine-tuned
    checkpoint reloads with the converted structure.
    """
    from ..neurons.lmht import LMHTNeuron
    from ..quant.qcfs import QCFS

    if cfg.neuron != "lmht":
        return model, None
    mods = list(model.modules())
    if not any(isinstance(m, QCFS) for m in mods) or any(isinstance(m, LMHTNeuron) for m in mods):
        return model, None
    snn = lmht_hybrid(model, cfg)
    scale = dict(cfg.neuron_kwargs).get("hybrid_bias_scale", "exact")
    return snn, (f"QCFS ANN -> LM-HT (L={cfg.neuron_arguments().get('levels')}, T={cfg.timesteps}, hybrid bias "
                 f"scale {scale})")


def mlif_hybrid(ann: nn.Module, cfg: TrainConfig, train_loader: Iterable | None = None) -> nn.Module:
    """ReLU (or log-quantized) ANN -> one-hot M-LIF SNN with ``S = cfg.lanes`` and data-driven thresholds (§5.6).

    ``neuron_kwargs`` keys among ``threshold_init, q, scale, num_batches, dropout, neuron_dropout, payload_scale,
    fold_batchnorm`` configure the initialisation (``dropout``: p of the architecture's dropout modules;
    ``neuron_dropout``: lane dropout in every neuron, default 0); every other key goes to
    :class:`~multispike.neurons.mlif.OneHotMLIF` (e.g. ``gamma``, ``learnable_payload_scale``).
    """
    from ..convert.mlif_init import mlif_hybrid_init

    if train_loader is None:
        raise ValueError("mlif_hybrid needs training batches for the threshold initialisation")
    lanes = cfg.neuron_arguments().get("lanes")
    if lanes is None:
        raise ParameterError("mlif_hybrid needs the lane count: set {lanes} S (e.g. 3)", "lanes")
    opts, neuron_kw = _options(cfg, _MLIF_OPTIONS, "mlif_hybrid", passthrough=True)
    neuron_kw.pop("v_threshold", None)   # set by the percentile rule
    _set_T(ann, cfg.timesteps)
    # A rebuild's placeholder batch gives no statistics (all-zero input -> "never positive" fallbacks): build the
    # structure only; the saved thresholds and payload scales are loaded right after.
    snn, _report = mlif_hybrid_init(ann, train_loader, lanes=int(lanes), T=cfg.timesteps, neuron_kwargs=neuron_kw,
                                    calibrate=not is_structure_only(train_loader), **opts)
    return _set_T(snn, cfg.timesteps)


def call_convert_hook(hook: Any, ann: nn.Module, cfg: TrainConfig, train_loader: Any) -> nn.Module:
    """Call ``hook(ann, cfg)`` or ``hook(ann, cfg, train_loader)`` depending on what it accepts."""
    try:
        params = inspect.signature(hook).parameters.values()
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        takes_data = len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in params)
    except (TypeError, ValueError):
        takes_data = False
    snn = hook(ann, cfg, train_loader) if takes_data else hook(ann, cfg)
    if not isinstance(snn, nn.Module):
        raise TypeError(f"convert hook {getattr(hook, '__name__', hook)!r} returned {type(snn).__name__}, expected "
                        f"an nn.Module")
    return snn
