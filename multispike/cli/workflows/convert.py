"""``multispike convert``'s workflow: a trained ANN / QCFS / QAT checkpoint to an IF, LM-HT, mixed-timestep (QAC)
or uniform-T SNN, measured at every timestep prefix and saved as a rebuildable checkpoint."""
from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping

from torch import nn

from ..._errors import ParameterError
from ..._validate import check_positive_int
from .common import (_check_out, _curve, _data_config, _clean_config, _example_shape, _load_source, _pct,
                     _quantizers, _timestep_rows, _write_json, data_spec, format_table, prefix_accuracy, save_network,
                     static_loader)

__all__ = ["TARGETS", "ALIGN_NONE", "LEVELS_DROP_WARN", "parse_align_option", "parse_bias_scale",
           "convert_checkpoint"]

TARGETS = ("if", "lmht", "mixed", "uniform")
#: Spellings of "no alignment" accepted by the CLI.
ALIGN_NONE = ("none", "off", "no")


def parse_align_option(value: str | None) -> str | None:
    """``"none"``/``None`` -> ``None``; otherwise a checked ``"<expansion>+<reduction>"`` mode.

    Raises:
        ValueError: an unknown mode (names it and the valid ones).
    """
    from ...layers import parse_align

    if value is None or str(value).lower() in ALIGN_NONE:
        return None
    try:
        parse_align(value)
    except ValueError:
        raise ParameterError(f"{{align}} {value!r} is not an alignment mode: use none, or '<expansion>+<reduction>' "
                             f"with expansion in {{repl, aver}} and reduction in {{trunc, aver}} (e.g. aver+aver, "
                             f"the paper's default)", "align") from None
    return str(value).lower().replace(" ", "")


def parse_bias_scale(value: str | float | None, levels: int) -> float | str:
    """``hybrid_bias_scale``: ``L``/``exact`` (the exact identity, default), ``1``/``code`` (LMHT-C) or a factor
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
        raise ParameterError(f"{{hybrid_bias_scale}} {value!r} is not valid: use 1 (LMHT-C's code), L (= {levels}, "
                             f"the exact QCFS identity) or a number > 0", "hybrid_bias_scale") from None
    if not (scale > 0 and math.isfinite(scale)):
        raise ParameterError(f"{{hybrid_bias_scale}} must be > 0, got {value!r}", "hybrid_bias_scale")
    return scale



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
            raise ParameterError("{threshold} qcfs takes each threshold from a QCFS/QAC clip, but this checkpoint "
                                 "has plain ReLU activations; use {threshold} 99.9% (or max, or another percentile)",
                                 "threshold")
        if threshold == "qcfs" and qcfs and not qac:
            return ({"op": "convert_qcfs_to_if", "args": {"T": timesteps}},
                    f"QCFS -> IF (θ = ϑ, v(0) = θ/2, BN kept), T = {timesteps}")
        from ...convert.converter import _percentile
        if threshold != "qcfs":
            _percentile(threshold)  # validates 'max' / 'NN.N%' / a number, with the converter's own message
        return ({"op": "convert_to_snn", "args": {"T": timesteps, "threshold": threshold, "fold_batchnorm": True,
                                                  "maxpool": "avg", "v_init": v_init, "target": "if"}},
                f"generic converter -> IF, threshold {threshold}, BN folded, v(0) = {v_init}, T = {timesteps}")
    if threshold not in (None, "qcfs"):
        raise ParameterError(f"{{threshold}} {threshold!r} applies to {{to}} if only; {{to}} {to} takes every "
                             f"threshold from the quantizer clip (QCFS ϑ / QAC α)", "threshold", "to")
    if to == "lmht":
        if not qcfs:
            raise ParameterError("{to} lmht converts a QCFS ANN (train one with --neuron qcfs --mode ann); this "
                                 "checkpoint has no QCFS activation" + (" (it has QAC quantizers: use {to} mixed)"
                                                                         if qac else ""), "to")
        args = {"levels": levels, "T": timesteps, "hybrid_bias_scale": bias_scale}
        if tgim is not None:
            args["tgim"] = tgim
        return ({"op": "convert_qcfs_to_lmht", "args": args},
                f"QCFS -> LM-HT, L = {levels}, T = {timesteps}, hybrid bias scale {bias_scale}"
                + (f", T-GIM {tgim}" if tgim is not None else ""))
    if to == "mixed":
        if not has_quant:
            raise ParameterError("{to} mixed needs a quantized ANN (QAC quantizers from `multispike qat`, or QCFS); "
                                 "this "
                                 "checkpoint has plain ReLU activations", "to")
        return ({"op": "to_mixed_timestep_snn", "args": {"align": align, "v_init": v_init, "fold_bn": True},
                 "example_shape": example_shape},
                f"QAC -> mixed-timestep IF SNN, align {align}, v(0) = {v_init}")
    if to == "uniform":
        if not has_quant:
            raise ParameterError("{to} uniform needs a quantized ANN (QCFS or QAC); this checkpoint has plain ReLU "
                                 "activations (use {to} if {threshold} 99.9%)", "to", "threshold")
        return ({"op": "to_uniform_snn", "args": {"T": timesteps, "align": align, "v_init": v_init, "fold_bn": True},
                 "example_shape": example_shape},
                f"uniform-T IF SNN, T = {timesteps}, align {align or 'none (plain QCFS)'}, v(0) = {v_init}")
    raise ParameterError(f"{{to}} must be one of {', '.join(TARGETS)}, got {to!r}", "to")


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

    from ...quant.qcfs import QCFS

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
    from ...convert.recipe import model_timesteps, run_step

    if to not in TARGETS:
        raise ParameterError(f"{{to}} must be one of {', '.join(TARGETS)}, got {to!r}", "to")
    if timesteps is not None:
        check_positive_int(timesteps, "timesteps", fix="Every spiking layer runs at least one timestep (T >= 1).")
    levels = check_positive_int(levels, "levels", fix="LM-HT needs L >= 1 levels.")
    if to == "mixed" and timesteps is not None:
        raise ParameterError("{to} mixed uses each layer's learned T_l; {timesteps} does not apply (use {to} uniform "
                             "{timesteps} T for one T in every layer)", "to", "timesteps")
    if to in ("if", "lmht", "uniform") and timesteps is None:
        raise ParameterError(f"{{to}} {to} needs {{timesteps}} T (e.g. {{timesteps}} 4)", "to", "timesteps")
    if to == "mixed":
        align = "aver+aver" if align == "default" else parse_align_option(align)
        if align is None:
            raise ParameterError("{to} mixed needs an alignment mode between layers with different T_l (e.g. "
                                 "aver+aver); 'none' only works when every layer has the same T (use {to} uniform)",
                                 "to", "align")
    elif to == "uniform":
        align = None if align == "default" else parse_align_option(align)
    elif align not in ("default", None):
        raise ParameterError(f"{{align}} applies to {{to}} mixed and {{to}} uniform only (got {{to}} {to})", "align",
                             "to")
    else:
        align = None
    if compare_align and to != "uniform":
        raise ParameterError("{compare_align} compares uniform-T QCFS conversions with and without averaging; use "
                             "it with {to} uniform", "compare_align", "to")
    if v_init not in ("half", "zero"):
        raise ParameterError(f"{{v_init}} must be half or zero, got {v_init!r}", "v_init")
    bias_scale = parse_bias_scale(hybrid_bias_scale, levels)
    if to != "lmht" and hybrid_bias_scale is not None:
        raise ParameterError("{hybrid_bias_scale} applies to {to} lmht only", "hybrid_bias_scale", "to")
    calib_batches = check_positive_int(calib_batches, "calib_batches")
    if tgim is not None and to != "lmht":
        raise ParameterError("{tgim} applies to {to} lmht only (the LM-HT neurons' temporal-global information "
                             "matrix)", "tgim", "to")
    if tgim not in (None, "learnable", "identity"):
        raise ParameterError(f"{{tgim}} must be learnable or identity, got {tgim!r}", "tgim")

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


