"""End-to-end workflows behind the command line: convert, calibrate, reparameterise, QAT summaries, event training.

Each workflow loads a checkpoint (any checkpoint :func:`multispike.train.rebuild.rebuild_model` can rebuild),
runs library functions that already exist - nothing here re-implements a conversion - measures accuracy at
every timestep prefix, writes a JSON result beside a readable ``report.txt``, and saves the resulting network as
a checkpoint that ``multispike eval --checkpoint``, ``multispike train --init-from`` and the other workflows load.

* :func:`convert_checkpoint` - a trained ANN / QCFS / QAT checkpoint to an IF, LM-HT, mixed-timestep (QAC) or
  uniform-T (QCFS with or without averaging alignment) SNN;
* :func:`calibrate_checkpoint` - QAC calibration of v(0) and θ of a converted SNN against its ANN (§4.5);
* :func:`reparameterize_checkpoint` - an LM-HT network to a single-threshold IF network with L·T steps (§2.7),
  with the per-layer agreement measured on data;
* :func:`qat_epoch_table` - per-epoch T_l / bit-width table of a ``multispike qat`` run.

Event-data training (``multispike events-train``) lives in :mod:`multispike.train.events`.

**Converted checkpoints.** A conversion changes the module tree (neurons replace activations, BN is folded,
layers get their own ``T_l``) and sets attributes that are not tensors. The checkpoint's JSON therefore holds a
*recipe* - the source network's descriptor and the conversion steps, each a :func:`~multispike.train.rebuild.
run_step` call that the conversion itself made - and a snapshot of the plain attributes. Loading re-runs the
steps on an untrained copy of the source architecture and then loads the converted weights, so the rebuilt
network computes exactly what the converted one did (the tests compare outputs bit for bit).

Example::

    result = convert_checkpoint("runs/qcfs_ann", "lmht", out="runs/lmht", timesteps=2, levels=2)
    result["snn"]["acc_per_t"], result["sanity"]          # LM-HT accuracy, IF at T and L·T from the same ANN
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .data.provenance import DataSpec
from .data.provenance import data_spec as _data_spec
from .neurons.base import check_positive_int

__all__ = ["TARGETS", "ALIGN_NONE", "DataSpec", "data_spec", "static_loader", "prefix_accuracy", "parse_align_option",
           "parse_bias_scale", "convert_checkpoint", "calibrate_checkpoint", "reparameterize_checkpoint",
           "teacher_checkpoint", "qat_epoch_table", "save_network", "format_table"]

TARGETS = ("if", "lmht", "mixed", "uniform")
#: Spellings of "no alignment" accepted by the CLI.
ALIGN_NONE = ("none", "off", "no")


# ----------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------
def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text table; the first row is the header."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _curve(accs: Sequence[float]) -> str:
    return " ".join(f"{100 * a:.2f}" for a in accs)


def _write_json(path: Path, data: Any) -> None:
    from .train.checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def parse_align_option(value: str | None) -> str | None:
    """``"none"``/``None`` -> ``None``; otherwise a checked ``"<expansion>+<reduction>"`` mode.

    Raises:
        ValueError: an unknown mode (names it and the valid ones).
    """
    from .layers import parse_align

    if value is None or str(value).lower() in ALIGN_NONE:
        return None
    try:
        parse_align(value)
    except ValueError:
        raise ValueError(f"--align {value!r} is not an alignment mode: use none, or '<expansion>+<reduction>' with "
                         f"expansion in {{repl, aver}} and reduction in {{trunc, aver}} (e.g. aver+aver, the "
                         f"paper's default)") from None
    return str(value).lower().replace(" ", "")


def parse_bias_scale(value: str | float | None, levels: int) -> float | str:
    """``--hybrid-bias-scale``: ``L``/``exact`` (the exact identity, default), ``1``/``code`` (LMHT-C) or a factor
    > 0."""
    if value is None:
        return "exact"
    text = str(value).strip()
    if text in ("L", "l"):
        return float(levels)
    if text in ("code", "exact"):
        return text
    try:
        scale = float(text)
    except ValueError:
        raise ValueError(f"--hybrid-bias-scale {value!r} is not valid: use 1 (LMHT-C's code), L (= {levels}, the "
                         f"exact QCFS identity) or a number > 0") from None
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"--hybrid-bias-scale must be > 0, got {value!r}")
    return scale


def _check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    ck = out / "checkpoints"
    if ck.exists() and any(ck.iterdir()):
        if not overwrite:
            raise ValueError(f"{out} already holds a checkpoint; choose another --out or pass --overwrite")
        import shutil
        shutil.rmtree(ck)
    out.mkdir(parents=True, exist_ok=True)
    return out


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
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
    from .data import TensorLoader
    from .data.provenance import load_split

    if limit is not None:
        limit = check_positive_int(limit, "--limit", fix="Give a number of samples >= 1.")
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
    from .metrics.prefix import prefix_accuracy as _prefix_accuracy

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
    from .data.provenance import data_record

    return {"dataset": spec.dataset, "data_dir": spec.data_dir, "dataset_kwargs": dict(spec.dataset_kwargs),
            "normalize": spec.normalize, "data_info": spec.record or data_record(info, None, spec.normalize)}


def save_network(out: Path, model: nn.Module, *, name: str, config: Mapping[str, Any], source_desc: Mapping[str, Any],
                 source_checkpoint: str, steps: list[dict], extra: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` as ``<out>/checkpoints`` with its rebuild recipe; returns the checkpoint JSON path.

    The recipe is ``{"version", "source": source_desc, "source_checkpoint", "steps"}``; the rebuild check
    (:func:`multispike.train.rebuild.rebuild_model`) runs right away, so a network that cannot be rebuilt is an
    error here rather than at load time.
    """
    from .train.checkpoint import load_checkpoint, save_checkpoint
    from .train.rebuild import RECIPE_VERSION, rebuild_model, structure_snapshot

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
    from .train.checkpoint import load_checkpoint
    from .train.rebuild import describe_checkpoint, rebuild_model

    ckpt = load_checkpoint(checkpoint)
    from .train.guards import check_finite_state
    check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")   # converting a diverged run gives garbage
    model, name = rebuild_model(ckpt)
    return ckpt, model, name, describe_checkpoint(ckpt.meta, ckpt.path)


def _quantizers(model: nn.Module) -> tuple[list[str], list[str]]:
    from .quant.qac import QACQuantizer
    from .quant.qcfs import QCFS

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
    from .quant.qac import average_timestep, quantizer_summary

    rows = quantizer_summary(model)
    if not rows:
        return [], None
    avg = average_timestep(model)
    return rows, {"plain": avg.plain, "op_weighted": avg.op_weighted}


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------
def _conversion_step(to: str, model: nn.Module, *, timesteps: int | None, levels: int, bias_scale: float | str,
                     align: str | None, threshold: str | None, v_init: str, example_shape: list[int],
                     tgim: str | None = None) -> tuple[dict, str]:
    """The step (``run_step`` dict) that converts ``model`` to ``to`` and a one-line description of it."""
    qcfs, qac = _quantizers(model)
    has_quant = bool(qcfs or qac)
    if to == "if":
        if threshold is None:
            threshold = "qcfs" if has_quant else "99.9%"
        if threshold == "qcfs" and not has_quant:
            raise ValueError("--threshold qcfs takes each threshold from a QCFS/QAC clip, but this checkpoint has "
                             "plain ReLU activations; use --threshold 99.9% (or max, or another percentile)")
        if threshold == "qcfs" and qcfs and not qac:
            return ({"op": "convert_qcfs_to_if", "args": {"T": timesteps}},
                    f"QCFS -> IF (θ = ϑ, v(0) = θ/2, BN kept), T = {timesteps}")
        from .convert.converter import _percentile
        if threshold != "qcfs":
            _percentile(threshold)  # validates 'max' / 'NN.N%' / a number, with the converter's own message
        return ({"op": "convert_to_snn", "args": {"T": timesteps, "threshold": threshold, "fold_batchnorm": True,
                                                  "maxpool": "avg", "v_init": v_init, "target": "if"}},
                f"generic converter -> IF, threshold {threshold}, BN folded, v(0) = {v_init}, T = {timesteps}")
    if threshold not in (None, "qcfs"):
        raise ValueError(f"--threshold {threshold!r} applies to --to if only; --to {to} takes every threshold from "
                         f"the quantizer clip (QCFS ϑ / QAC α)")
    if to == "lmht":
        if not qcfs:
            raise ValueError("--to lmht converts a QCFS ANN (train one with --neuron qcfs --mode ann); this checkpoint "
                             "has no QCFS activation" + (" (it has QAC quantizers: use --to mixed)" if qac else ""))
        args = {"levels": levels, "T": timesteps, "hybrid_bias_scale": bias_scale}
        if tgim is not None:
            args["tgim"] = tgim
        return ({"op": "convert_qcfs_to_lmht", "args": args},
                f"QCFS -> LM-HT, L = {levels}, T = {timesteps}, hybrid bias scale {bias_scale}"
                + (f", T-GIM {tgim}" if tgim is not None else ""))
    if to == "mixed":
        if not has_quant:
            raise ValueError("--to mixed needs a quantized ANN (QAC quantizers from `multispike qat`, or QCFS); this "
                             "checkpoint has plain ReLU activations")
        return ({"op": "to_mixed_timestep_snn", "args": {"align": align, "v_init": v_init, "fold_bn": True},
                 "example_shape": example_shape},
                f"QAC -> mixed-timestep IF SNN, align {align}, v(0) = {v_init}")
    if to == "uniform":
        if not has_quant:
            raise ValueError("--to uniform needs a quantized ANN (QCFS or QAC); this checkpoint has plain ReLU "
                             "activations (use --to if --threshold 99.9%)")
        return ({"op": "to_uniform_snn", "args": {"T": timesteps, "align": align, "v_init": v_init, "fold_bn": True},
                 "example_shape": example_shape},
                f"uniform-T IF SNN, T = {timesteps}, align {align or 'none (plain QCFS)'}, v(0) = {v_init}")
    raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")


def _report_text(report: Any) -> str:
    return "" if report is None else str(report)


def _report_dict(report: Any) -> Any:
    if report is None:
        return None
    if hasattr(report, "to_dict"):
        return report.to_dict()
    return str(report)


#: A QCFS ANN whose accuracy at the SNN's number of levels is this much below its trained accuracy gets a warning.
LEVELS_DROP_WARN = 0.10


def _levels_check(ann: nn.Module, test: Any, to: str, timesteps: int | None, levels: int, ann_acc: dict,
                  log) -> dict | None:
    """The QCFS ANN evaluated with as many quantization levels as the SNN has steps (T; L·T for LM-HT).

    An IF neuron run for T steps approximates the QCFS ANN with T levels, so an ANN that collapses at more levels
    than it was trained with (its clips ϑ far above its activations: a few coarse levels carry everything) gives
    an SNN whose accuracy *falls* as T grows. Returns ``{"levels", "trained_levels", "acc", "warning"}`` or
    ``None`` (no QCFS layer, or the same number of levels)."""
    import copy

    from .quant.qcfs import QCFS

    qcfs = [m for m in ann.modules() if isinstance(m, QCFS)]
    if not qcfs or to not in ("if", "uniform", "lmht") or timesteps is None:
        return None
    n = timesteps * (levels if to == "lmht" else 1)
    trained = sorted({int(m.levels) for m in qcfs})
    if trained == [n]:
        return None
    probe = copy.deepcopy(ann)
    for m in probe.modules():
        if isinstance(m, QCFS):
            m.levels = n
    acc = prefix_accuracy(probe, test)["acc"]
    warning = None
    if acc < ann_acc["acc"] - LEVELS_DROP_WARN:
        clips = [float(m.threshold.detach()) for m in qcfs]
        warning = (f"warning: the QCFS ANN ({_pct(ann_acc['acc'])}% at its {'/'.join(map(str, trained))} levels) "
                   f"reaches only {_pct(acc)}% evaluated with {n} levels, which the SNN at "
                   f"{'L·T = ' if to == 'lmht' else 'T = '}{n} approximates: expect accuracy to fall as T grows. "
                   f"Its clips ϑ ({', '.join(f'{c:.3g}' for c in clips[:6])}{' ...' if len(clips) > 6 else ''}) are "
                   f"likely far above its activations; retrain with clips initialised from the data (the default "
                   f"of `multispike train`, --clip-init) or convert at T = its levels.")
        log(warning)
    return {"levels": n, "trained_levels": trained, "acc": acc, "warning": warning}


def convert_checkpoint(checkpoint: str | os.PathLike, to: str, *, out: str | os.PathLike, timesteps: int | None = None,
                       levels: int = 2, hybrid_bias_scale: str | float | None = None, align: str | None = "default",
                       threshold: str | None = None, v_init: str = "half", dataset: str | None = None,
                       data_dir: str | None = None, data_opts: Mapping[str, Any] | None = None,
                       limit: int | None = None, batch_size: int = 128,
                       calib_batches: int = 8, compare_align: bool = False, sanity: bool = True,
                       tgim: str | None = None, overwrite: bool = False, log=print) -> dict:
    """Convert a trained checkpoint, measure it, and save the SNN as a rebuildable checkpoint in ``out``.

    Args:
        checkpoint: a run directory or checkpoint file (ANN, QCFS ANN, QAT model; any rebuildable checkpoint).
        to: ``"if"`` (QCFS -> IF of §3.2, or the generic converter with data thresholds for ReLU ANNs),
            ``"lmht"`` (§2.6 hybrid initialisation), ``"mixed"`` (QAC per-layer T_l, §4.3-§4.4) or ``"uniform"``
            (every layer at ``timesteps``, with or without averaging alignment: QAC's Table 8 baseline).
        timesteps: T (``if``, ``lmht``, ``uniform``; not allowed for ``mixed``, whose T_l are learned).
        levels: L of LM-HT.
        hybrid_bias_scale: ``L``/``exact`` (default: the LM-HT net equals the QCFS ANN with L·T levels) or
            ``1``/``code`` (LMHT-C's conversion) (§2.6 bias caveat).
        align: ``mixed``: alignment mode (default ``aver+aver``); ``uniform``: ``None`` (default, plain QCFS) or
            a mode; not allowed otherwise.
        threshold: ``if`` only: ``qcfs`` (the quantizer clip; default for quantized ANNs), ``max``, ``99.9%``
            (default for ReLU ANNs) or another percentile; statistics come from ``calib_batches`` training batches.
        v_init: ``half`` (θ/2) or ``zero`` for the IF-based targets.
        dataset, data_dir, data_opts: override the checkpoint's data (``data_opts``: reader options, merged
            over the checkpoint's). limit: evaluate on a class-stratified subset of ``limit`` test images.
        compare_align: ``uniform``: also convert with the other alignment choice and tabulate both (Table 8).
        sanity: ``lmht``: also convert the ANN to IF at T and at L·T (the paper's sanity conversion) and measure.
        tgim: ``lmht``: the T-GIM of the LM-HT neurons, ``"learnable"`` (the paper's, trainable; mixes steps, so
            NIR cannot express it) or ``"identity"`` (fixed; exportable to NIR). ``None``: the converter's default.

    Returns:
        The JSON-ready result (also ``<out>/conversion.json``; the printout is ``<out>/report.txt``).
    """
    from .train.rebuild import model_timesteps, run_step

    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    if timesteps is not None:
        check_positive_int(timesteps, "--timesteps", fix="Every spiking layer runs at least one timestep (T >= 1).")
    levels = check_positive_int(levels, "--levels", fix="LM-HT needs L >= 1 levels.")
    if to == "mixed" and timesteps is not None:
        raise ValueError("--to mixed uses each layer's learned T_l; --timesteps does not apply (use --to uniform "
                         "--timesteps T for one T in every layer)")
    if to in ("if", "lmht", "uniform") and timesteps is None:
        raise ValueError(f"--to {to} needs --timesteps T (e.g. --timesteps 4)")
    if to == "mixed":
        align = "aver+aver" if align == "default" else parse_align_option(align)
        if align is None:
            raise ValueError("--to mixed needs an alignment mode between layers with different T_l (e.g. aver+aver); "
                             "'none' only works when every layer has the same T (use --to uniform)")
    elif to == "uniform":
        align = None if align == "default" else parse_align_option(align)
    elif align not in ("default", None):
        raise ValueError(f"--align applies to --to mixed and --to uniform only (got --to {to})")
    else:
        align = None
    if compare_align and to != "uniform":
        raise ValueError("--compare-align compares uniform-T QCFS conversions with and without averaging; use it "
                         "with --to uniform")
    if v_init not in ("half", "zero"):
        raise ValueError(f"--v-init must be half or zero, got {v_init!r}")
    bias_scale = parse_bias_scale(hybrid_bias_scale, levels)
    if to != "lmht" and hybrid_bias_scale is not None:
        raise ValueError("--hybrid-bias-scale applies to --to lmht only")
    calib_batches = check_positive_int(calib_batches, "--calib-batches")
    if tgim is not None and to != "lmht":
        raise ValueError("--tgim applies to --to lmht only (the LM-HT neurons' temporal-global information matrix)")
    if tgim not in (None, "learnable", "identity"):
        raise ValueError(f"--tgim must be learnable or identity, got {tgim!r}")

    out = _check_out(out, overwrite)
    ckpt, ann, name, desc = _load_source(checkpoint)
    cfg = ckpt.meta.get("config") or {}
    spec = data_spec(cfg, dataset, data_dir, data_opts, origin=str(ckpt.path))
    test, info = static_loader(spec, "test", limit=limit, batch_size=batch_size,
                               num_classes=getattr(ann, "num_classes", None), log=log)
    example_shape = _example_shape(ann, info)
    step, how = _conversion_step(to, ann, timesteps=timesteps, levels=levels, bias_scale=bias_scale, align=align,
                                 threshold=threshold, v_init=v_init, example_shape=example_shape, tgim=tgim)
    data = None
    if step["op"] == "convert_to_snn" and step["args"]["threshold"] != "qcfs":
        calib, _ = static_loader(spec, "train", limit=calib_batches * batch_size, batch_size=batch_size,
                                 stratified=True)
        data = list(calib)
    ann_acc = prefix_accuracy(ann, test)
    log(f"source: {name} from {ckpt.path}: accuracy {_pct(ann_acc['acc'])}% on {ann_acc['samples']} {spec.dataset} "
        f"test images")
    levels_check = _levels_check(ann, test, to, timesteps, levels, ann_acc, log)
    t0 = time.perf_counter()
    snn, report = run_step(ann, step, data=data)
    convert_s = time.perf_counter() - t0
    snn.eval()
    snn_acc = prefix_accuracy(snn, test)
    T_run = model_timesteps(snn)
    rows, avg = _timestep_rows(snn)
    if avg is not None and getattr(report, "average_T_op_weighted", None) is not None:
        avg["op_weighted"] = report.average_T_op_weighted    # needs the example pass the converter made
    result: dict[str, Any] = {
        "command": "convert", "to": to, "how": how, "source_checkpoint": str(ckpt.path), "model": name,
        "dataset": spec.dataset, "split": "test", "samples": snn_acc["samples"], "timesteps": T_run,
        "levels": levels if to == "lmht" else None, "align": align, "step": step, "convert_time_s": round(convert_s, 3),
        "ann": ann_acc, "snn": snn_acc, "layers": rows, "average_T": avg, "report": _report_dict(report),
        "levels_check": levels_check}

    # mixed/uniform networks take the analog image once (encoder T = 1); their layers run T_l steps each
    T_label = {"mixed": f"T_l, avg {avg['plain']:.3g}" if avg else "T_l",
               "uniform": str(timesteps)}.get(to, str(T_run))
    lines = [f"{name}: {how}", "", _report_text(report), ""]
    if levels_check and levels_check["warning"]:
        lines += [levels_check["warning"], ""]
    table = [("network", "T", "accuracy %", "accuracy at t = 1, 2, ... (%)"),
             ("source ANN", "-", _pct(ann_acc["acc"]), "-"),
             (f"SNN ({to})", T_label, _pct(snn_acc["acc"]), _curve(snn_acc["acc_per_t"]))]
    if to == "lmht" and sanity:
        sanity_rows = []
        for T_if in sorted({timesteps, levels * timesteps}):
            if_net, _ = run_step(ann, {"op": "convert_qcfs_to_if", "args": {"T": T_if}})
            acc = prefix_accuracy(if_net, test)
            sanity_rows.append({"target": "if", "T": T_if, **acc})
            table.append(("IF sanity (same ANN)", T_if, _pct(acc["acc"]), _curve(acc["acc_per_t"])))
        result["sanity"] = sanity_rows
    if to == "uniform" and compare_align:
        other = "aver+aver" if align is None else None
        step2 = {**step, "args": {**step["args"], "align": other}}
        snn2, _ = run_step(ann, step2)
        acc2 = prefix_accuracy(snn2, test)
        result["compare_align"] = [{"align": align, **snn_acc}, {"align": other, **acc2}]
        table[-1] = (f"QCFS{' + ' + align if align else ''} (uniform)", T_label, _pct(snn_acc["acc"]),
                     _curve(snn_acc["acc_per_t"]))
        table.append((f"QCFS{' + ' + other if other else ''} (uniform)", T_label, _pct(acc2["acc"]),
                      _curve(acc2["acc_per_t"])))
    lines.append(format_table(table))
    if avg is not None:
        lines.append(f"average T = {avg['plain']:.4g} (plain mean over {len(rows)} spiking layers)"
                     + (f", {avg['op_weighted']:.4g} weighted by operations" if avg.get("op_weighted") else ""))

    neuron = "lmht" if to == "lmht" else "if"
    config = _clean_config(cfg, neuron=neuron, timesteps=T_run or 1, levels=levels if to == "lmht" else None,
                           **_data_config(spec, info), out=str(out))
    path = save_network(out, snn, name=name, config=config, source_desc=desc, source_checkpoint=str(ckpt.path),
                        steps=[step], extra={"results": {"to": to, "acc": snn_acc["acc"],
                                                         "acc_per_t": snn_acc["acc_per_t"],
                                                         "ann_acc": ann_acc["acc"], "average_T": avg}})
    result["checkpoint"] = str(path)
    lines += ["", f"saved {path} (load with `multispike eval --checkpoint {out}` or `multispike train --mode snn "
                  f"--init-from {out}`)"]
    text = "\n".join(lines)
    _write_json(out / "conversion.json", result)
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result


# ----------------------------------------------------------------------------------------------------
# Calibration (QAC §4.5)
# ----------------------------------------------------------------------------------------------------
def teacher_checkpoint(meta: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """The checkpoint of the ANN a converted network came from.

    Follows conversion sources, and the ``init_from`` of spiking fine-tunes, back to the first network that is
    an ANN: a checkpoint trained in mode ``ann`` or ``qat`` is the teacher *even when it started from another
    checkpoint* (after ``qat --init-from QCFS_ANN`` the SNN was converted from the QAT network, not from the
    QCFS ANN; distilling toward the latter would be another network's target)."""
    from .train.rebuild import _resolve_reference, read_checkpoint_meta

    here = Path(path)
    seen = set()
    while True:
        key = str(here.resolve())
        if key in seen:
            raise ValueError(f"checkpoint references form a loop at {here}")
        seen.add(key)
        cfg = meta.get("config") or {}
        if meta.get("conversion"):
            ref = meta["conversion"].get("source_checkpoint")
        elif cfg.get("mode") in ("ann", "qat"):
            return here
        elif cfg.get("init_from"):
            ref = cfg["init_from"]
        else:
            return here
        if not ref:
            raise ValueError(f"{here} does not record the checkpoint it came from; pass --ann-checkpoint")
        here, meta = read_checkpoint_meta(_resolve_reference(ref, here, "the source checkpoint"))


def calibrate_checkpoint(checkpoint: str | os.PathLike, *, out: str | os.PathLike, epochs: int = 10, lr: float = 1e-3,
                         target: str = "quantized", v_init_shape: str = "channel",
                         ann_checkpoint: str | os.PathLike | None = None, dataset: str | None = None,
                         data_dir: str | None = None, data_opts: Mapping[str, Any] | None = None,
                         calib_samples: int = 512, limit: int | None = None,
                         batch_size: int = 64, overwrite: bool = False, log=print) -> dict:
    """Calibrate v(0) and θ of a converted SNN against its ANN (QAC §4.5) and save the result.

    The teacher is the ANN the SNN was converted from (found through the checkpoint's recipe, or
    ``ann_checkpoint``); the data are ``calib_samples`` class-balanced training images used *without labels*;
    the before/after loss and accuracy are measured on the test split (``limit`` images).
    """
    from .convert.calibrate import TARGETS as CAL_TARGETS
    from .convert.calibrate import V_INIT_SHAPES, calibrate, spiking_neurons
    from .train.checkpoint import load_checkpoint
    from .train.rebuild import describe_checkpoint, model_timesteps, rebuild_model

    if target not in CAL_TARGETS:
        raise ValueError(f"--target must be one of {', '.join(CAL_TARGETS)}, got {target!r}")
    if v_init_shape not in V_INIT_SHAPES:
        raise ValueError(f"--v-init-shape must be one of {', '.join(V_INIT_SHAPES)}, got {v_init_shape!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"--epochs must be an integer >= 0, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr must be a number > 0, got {lr!r}")
    calib_samples = check_positive_int(calib_samples, "--calib-samples")

    ckpt = load_checkpoint(checkpoint)
    snn, name = rebuild_model(ckpt)
    neurons = spiking_neurons(snn)
    if not neurons:
        raise ValueError(f"{ckpt.path} ({name}) has no spiking layers to calibrate (no IF/LIF neuron with a threshold "
                         f"and an initial membrane); convert it first, e.g. `multispike convert --checkpoint "
                         f"{checkpoint} --to mixed --out DIR`, and calibrate that")
    out = _check_out(out, overwrite)
    teacher_path = Path(ann_checkpoint) if ann_checkpoint is not None else teacher_checkpoint(ckpt.meta, ckpt.path)
    ann_ckpt = load_checkpoint(teacher_path)
    ann, ann_name = rebuild_model(ann_ckpt)
    cfg = ckpt.meta.get("config") or {}
    spec = data_spec(cfg, dataset, data_dir, data_opts, origin=str(ckpt.path))
    k = getattr(snn, "num_classes", None)
    calib, _ = static_loader(spec, "train", limit=calib_samples, batch_size=batch_size, stratified=True,
                             num_classes=k, log=log)
    images = [x for x, _ in calib]                     # unlabeled: the labels never reach calibrate()
    test, info = static_loader(spec, "test", limit=limit, batch_size=batch_size, num_classes=k, log=log)
    test_batches = list(test)
    before = prefix_accuracy(snn, test_batches)
    log(f"calibrating {name} from {ckpt.path} against {ann_name} ({ann_ckpt.path}), {target} target, v(0) per "
        f"{v_init_shape}, {epochs} epochs on {sum(int(x.shape[0]) for x in images)} unlabeled training images")
    report = calibrate(snn, ann, images, epochs=epochs, lr=lr, target=target, v_init_shape=v_init_shape,
                       eval_iter=test_batches)
    after = prefix_accuracy(snn, test_batches)
    rows, avg = _timestep_rows(snn)
    T_of = {r["layer"]: r["T"] for r in rows}
    table = [("layer", "T_l", "θ before", "θ after", "mean v(0) before", "mean v(0) after", "v(0) shape")]
    for row in report.layers:
        aligned = row["layer"].rsplit(".neuron", 1)[0] if row["layer"].endswith(".neuron") else row["layer"]
        table.append((row["layer"], T_of.get(aligned, model_timesteps(snn) or "-"), f"{row['theta_before']:.4g}",
                      f"{row['theta_after']:.4g}", f"{row['v_init_before']:.4g}", f"{row['v_init_after']:.4g}",
                      "x".join(map(str, row["v_init_shape"])) or "scalar"))
    buffer_shapes = {n: {"v_init": list(m.v_init.shape), "v_threshold": list(m.v_threshold.shape)} for n, m in neurons}
    step = {"op": "calibrate", "args": {"buffer_shapes": buffer_shapes},
            "settings": {"epochs": epochs, "lr": lr, "target": target, "v_init_shape": v_init_shape}}
    config = _clean_config(cfg, **_data_config(spec, info), out=str(out))
    path = save_network(out, snn, name=name, config=config, source_desc=describe_checkpoint(ckpt.meta, ckpt.path),
                        source_checkpoint=str(ckpt.path), steps=[step],
                        extra={"results": {"calibration": report.to_dict(), "acc": after["acc"]}})
    result = {"command": "calibrate", "source_checkpoint": str(ckpt.path), "teacher_checkpoint": str(ann_ckpt.path),
              "model": name, "dataset": spec.dataset, "report": report.to_dict(), "before": before, "after": after,
              "layers": rows, "average_T": avg, "checkpoint": str(path)}
    lines = [f"calibrated {len(report.layers)} spiking layers of {name}: {epochs} epochs, Adam lr {lr:g}, "
             f"surrogate {report.surrogate} ({report.surrogate_form}), {report.samples} evaluation images",
             f"loss (½·mean squared logit error vs the {target} ANN): {report.loss_before:.6g} -> "
             f"{report.loss_after:.6g}",
             f"SNN accuracy: {_pct(before['acc'])}% -> {_pct(after['acc'])}%"
             + (f" (ANN {_pct(report.reference_accuracy)}%)" if report.reference_accuracy is not None else ""),
             f"accuracy at t = 1, 2, ... after: {_curve(after['acc_per_t'])}", "", format_table(table)]
    if avg is not None:
        lines.append(f"average T = {avg['plain']:.4g} over {len(rows)} spiking layers")
    if getattr(report, "reverted", False):
        lines.append("note: calibration ended with a higher loss, so the converted v(0) and θ were kept. A mixed SNN "
                     "with aver+aver, integer T_l and v(0) = θ/2 already equals its quantized ANN (§4.4; up to float "
                     "rounding at quantization steps) - calibration pays off where conversion leaves a gap "
                     "(repl/trunc alignment, --to uniform without averaging, --target float). Otherwise try a "
                     "smaller --lr or more --calib-samples.")
    lines += ["", f"saved {path}"]
    text = "\n".join(lines)
    _write_json(out / "calibration.json", result)
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result


# ----------------------------------------------------------------------------------------------------
# LM-HT reparameterisation (§2.7)
# ----------------------------------------------------------------------------------------------------
def reparameterize_checkpoint(checkpoint: str | os.PathLike, *, out: str | os.PathLike, dataset: str | None = None,
                              data_dir: str | None = None, data_opts: Mapping[str, Any] | None = None,
                              limit: int | None = None, batch_size: int = 128,
                              overwrite: bool = False, log=print) -> dict:
    """Reparameterise an LM-HT checkpoint (converted or fine-tuned) into an IF network with L·T steps.

    Prints the reparameterisation summary and the per-layer window spike-count agreement measured on the
    test images (:func:`multispike.convert.lmht.reparameterization_report`), the accuracy of both networks at
    every prefix, and saves the IF network.
    """
    from .convert.lmht import reparameterization_report
    from .neurons.lmht import LMHTNeuron, MHTNeuron
    from .train.rebuild import model_timesteps, run_step

    ckpt, lmht, name, desc = _load_source(checkpoint)
    if not any(isinstance(m, (LMHTNeuron, MHTNeuron)) for m in lmht.modules()):
        raise ValueError(f"{ckpt.path} ({name}) has no LM-HT/M-HT neuron to reparameterise; convert a QCFS ANN with "
                         f"`multispike convert --to lmht` (or train with --neuron lmht) first")
    out = _check_out(out, overwrite)
    cfg = ckpt.meta.get("config") or {}
    spec = data_spec(cfg, dataset, data_dir, data_opts, origin=str(ckpt.path))
    test, info = static_loader(spec, "test", limit=limit, batch_size=batch_size,
                               num_classes=getattr(lmht, "num_classes", None), log=log)
    batches = list(test)
    step = {"op": "reparameterize_lmht", "args": {}}
    if_net, rep = run_step(lmht, step)
    agreement = reparameterization_report(lmht, if_net, batches)
    acc_lmht = prefix_accuracy(lmht, batches)
    acc_if = prefix_accuracy(if_net, batches)
    T_if = model_timesteps(if_net)
    config = _clean_config(cfg, neuron="if", timesteps=T_if, levels=None, **_data_config(spec, info), out=str(out))
    path = save_network(out, if_net, name=name, config=config, source_desc=desc, source_checkpoint=str(ckpt.path),
                        steps=[step], extra={"results": {"acc": acc_if["acc"], "acc_per_t": acc_if["acc_per_t"],
                                                         "agreement": agreement.to_dict()}})
    result = {"command": "reparam", "source_checkpoint": str(ckpt.path), "model": name, "dataset": spec.dataset,
              "reparameterization": rep.to_dict(), "agreement": agreement.to_dict(), "lmht": acc_lmht, "if": acc_if,
              "checkpoint": str(path)}
    table = [("network", "steps", "accuracy %", "accuracy at t = 1, 2, ... (%)"),
             (f"LM-HT (L={rep.levels}, T={rep.T})", rep.T, _pct(acc_lmht["acc"]), _curve(acc_lmht["acc_per_t"])),
             ("reparameterised IF", T_if, _pct(acc_if["acc"]), _curve(acc_if["acc_per_t"]))]
    text = "\n".join([str(rep), "", str(agreement), "", format_table(table), "", f"saved {path}"])
    _write_json(out / "reparam.json", result)
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result


# ----------------------------------------------------------------------------------------------------
# QAT summary
# ----------------------------------------------------------------------------------------------------
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
