"""The demo's rows: an explicit registry (:data:`ROWS`) of producers, one per comparison.

A producer is ``producer(cfg, ctx, log) -> list[row]``. ``ctx`` holds the loaders (``"train"``, ``"test"``,
``"calib"``), the trained ReLU ANN (``"ann"``, ``"ann_accuracy"``), anything producers share (the QCFS ANN, the IF
network ``"if_snn"``, the IF spike rates ``"spike_rates"``) and ``"sections"``, text blocks printed after the
table. Every network is trained by :func:`~multispike.demo.common.train_classifier`, the package's trainer. Add a
row with :func:`register_row` (or by adding it to :data:`ROWS`); :func:`multispike.demo.run_demo` runs the rows
``cfg.rows`` names, ``if`` first. Every number in a row is measured in that run on the embedded digits (1,438
train / 359 test images). The recipes, scaled from the papers to this 8x8 task and a CPU budget of seconds:

``if`` (rate conversion, algorithms.md §3.2)
    The ReLU ANN converted to IF neurons (BN folded, θ from the ``cfg.threshold`` percentile of each layer's
    pre-activations, v(0) = θ/2), evaluated at every T of ``cfg.timesteps``, with per-layer spike rates.

``lmht`` (LM-HT, algorithms.md §2.6-§2.7, §3)
    A QCFS ANN (``Q = cfg.qcfs_levels`` levels, learnable clip) is trained from the ReLU ANN's weights.
    From it: IF at ``T`` and ``L·T`` (θ = ϑ, v(0) = θ/2); LM-HT(L, T) right after the hybrid conversion with
    ``hybrid_bias_scale`` 1 (LMHT-C) and L (exact: the net then equals the QCFS net with ``L·T`` levels,
    Theorem 4.4's deterministic form); the exact one fine-tuned with STBP; and the fine-tuned net
    reparameterised to a single-threshold IF net running ``L·T`` steps, with its measured agreement.

``qac`` (QAC, §4)
    :func:`~multispike.quant.qat.prepare_qat` turns the ReLUs of a copy of the ReLU ANN into (t, α)
    quantizers, trained jointly with the weights (quantization-aware fine-tuning; Adam, (t, α) at their own
    rate), once with cross-entropy only (QAC's Alg. 1) and once with multispike's latency term
    λ·Σ_l w_l·t_l (w_l ∝ the layer's synaptic MACs), which is what makes the learned T_l differ between
    layers. Reported for the latter: per-layer ``T_l``, the plain and op-weighted average T, the quantized ANN,
    the mixed-timestep SNN (``aver+aver``) before and after calibration of v(0) and θ, and the QCFS ANN of the
    ``lmht`` rows converted at the uniform ``T = round(average T)`` with and without averaging alignment
    (QAC's Table 8 setting).

``mlif`` (one-hot M-LIF, §5)
    The ReLU ANN becomes a ``b = cfg.mlif_bits`` log-quantized ANN (ReLU + LogQuant, α calibrated at P99.7, no
    training). :func:`~multispike.convert.mlif_init.mlif_hybrid_init` (``threshold_init="logquant"``) maps it
    to M-LIF SNNs at T = 1 with ``S = 2^b − 1`` lanes (the exact pairing: θ = α·2^(3/2−2^b), a spike worth
    √2·θ·2^s, so the init equals the LQ-ANN value by value), ``S = 2`` (the paper's Table 2 pairing, which drops
    the lowest LQ level) and ``S = 1`` (LIF); each is evaluated right after the init (with its argmax agreement
    with the LQ-ANN) and after the same fine-tuning (Adam at MLIF-P's lr 1e-4, triangle γ = ``cfg.mlif_gamma``).
    The paper text's P90 init from the ReLU ANN is listed for reference. Per-layer spike events and active
    lanes, the distinct payloads (one-hot: 0 and powers of two) and the DIET energy ratio δ = E_ANN / E_SNN
    (MLIF-P eq. (11), 45 nm constants) are reported with :mod:`multispike.metrics`.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Callable

import torch

from ..convert.calibrate import calibrate
from ..convert.converter import convert_to_snn
from ..convert.lmht import (convert_qcfs_to_if, convert_qcfs_to_lmht, reparameterization_report,
                            reparameterize_lmht)
from ..convert.mixed_timestep import to_mixed_timestep_snn, to_uniform_snn
from ..convert.mlif_init import mlif_hybrid_init
from ..metrics import count_ops, diet_energy
from ..models.digits import DigitsCNN
from ..quant.qac import QACQuantizer, average_timestep, quantizer_summary
from ..quant.latency import LatencyRegulariser
from ..quant.qat import prepare_qat
from ..quant.qcfs import QCFS
from .common import evaluate_prefixes, predictions, spike_rates, spike_statistics, train_classifier
from .config import DemoConfig

__all__ = ["ROWS", "RowProducer", "register_row", "if_rows", "qcfs_ann", "lmht_rows", "qac_rows", "lq_ann",
           "mlif_rows"]

Log = Callable[[str], None]
#: ``producer(cfg, ctx, log) -> list of row dicts`` (see the module docstring).
RowProducer = Callable[[DemoConfig, dict, Log], list]


def if_rows(cfg: DemoConfig, ctx: dict, log: Log) -> list[dict]:
    """The ReLU ANN converted to IF (θ = ``cfg.threshold`` of the pre-activations, v0 = θ/2) at every T of
    ``cfg.timesteps``; stores the network (``ctx["if_snn"]``, ``ctx["if_report"]``) and the per-layer spike rates
    at every T (``ctx["spike_rates"]``)."""
    base = "ReLU ANN -> IF (rate conversion)"
    calib, test = ctx["calib"], ctx["test"]
    rows = []
    t_max = max(cfg.timesteps)
    snn, report = convert_to_snn(ctx["ann"], T=t_max, threshold=cfg.threshold, calibration_data=[calib])
    prefix = evaluate_prefixes(snn, test)
    for T in cfg.timesteps:
        rows.append({"group": base, "method": "IF (converted)", "T": T, "accuracy": prefix[T - 1],
                     "notes": f"θ = {cfg.threshold} of pre-activations, v0 = θ/2"})
    per_layer = {}
    for T in cfg.timesteps:
        snn.set_timesteps(T)
        per_layer[T] = spike_rates(snn, calib[:256])
    ctx["if_snn"], ctx["if_report"], ctx["spike_rates"] = snn, report, per_layer
    log(str(report))
    return rows


def _thresholds(model: torch.nn.Module) -> list[float]:
    return [round(float(m.threshold.detach()), 4) for m in model.modules() if isinstance(m, QCFS)]


def _final_accuracy(model: torch.nn.Module, ctx: dict) -> float:
    """Accuracy (%) of the time-mean output over all steps the model runs."""
    return evaluate_prefixes(model, ctx["test"])[-1]


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).double().mean())


def qcfs_ann(cfg: DemoConfig, ctx: dict, log: Log) -> tuple[DigitsCNN, float, float]:
    """The QCFS ANN shared by the ``lmht`` and ``qac`` rows: ``(model, test accuracy %, training seconds)``.

    Built once per run (cached in ``ctx``): a DigitsCNN with QCFS activations (``cfg.qcfs_levels`` levels, clip
    ϑ starting at ``cfg.qcfs_threshold`` in every layer) takes the ReLU ANN's weights and is trained
    ``cfg.qcfs_epochs`` epochs, ϑ included.
    """
    cache = ctx.setdefault("qcfs_ann", {})
    key = (cfg.qcfs_levels, cfg.qcfs_threshold)
    if key not in cache:
        torch.manual_seed(cfg.seed)
        net = DigitsCNN("qcfs", neuron_kwargs=dict(levels=cfg.qcfs_levels, threshold=cfg.qcfs_threshold))
        missing, unexpected = net.load_state_dict(ctx["ann"].state_dict(), strict=False)
        if unexpected or any(not k.endswith(".threshold") for k in missing):  # only the clips ϑ are new
            raise RuntimeError(f"qcfs_ann: ReLU ANN and QCFS ANN differ beyond the clips: {missing} {unexpected}")
        secs = train_classifier(net, ctx["train"], cfg.qcfs_epochs, cfg.qcfs_lr, f"QCFS ANN (Q={cfg.qcfs_levels})",
                                cfg.progress)
        acc = evaluate_prefixes(net, ctx["test"])[0]
        log(f"QCFS ANN (Q={cfg.qcfs_levels}): {acc:.2f}% ({cfg.qcfs_epochs} epochs from the ReLU ANN, {secs:.1f} s), "
            f"ϑ = {_thresholds(net)}")
        cache[key] = (net, acc, secs)
    return cache[key]


# ----------------------------------------------------------------------------------------------------
# LM-HT (algorithms.md §2-§3)
# ----------------------------------------------------------------------------------------------------
def lmht_rows(cfg: DemoConfig, ctx: dict, log: Log) -> list[dict]:
    """QCFS ANN, IF at T and L·T, LM-HT(L, T) after conversion and after STBP, and its reparameterised IF net."""
    L, T, Q = cfg.lmht_levels, cfg.lmht_timesteps, cfg.qcfs_levels
    LT = L * T
    group = f"LM-HT (L={L}, T={T}) vs IF, all from one QCFS ANN (Q={Q})"
    test = ctx["test"]
    q, q_acc, q_secs = qcfs_ann(cfg, ctx, log)
    q_pred = predictions(q, test)
    rows = [{"group": group, "method": f"QCFS ANN (Q={Q})", "T": None, "accuracy": q_acc,
             "notes": f"ReLU ANN + {cfg.qcfs_epochs} epochs with QCFS; clip ϑ {cfg.qcfs_threshold:g} -> "
                      f"{'/'.join(f'{t:.2f}' for t in _thresholds(q))}",
             "qcfs_levels": Q, "clip": _thresholds(q), "train_s": round(q_secs, 2)}]

    # Sanity conversion to IF (θ = ϑ, v0 = θ/2), evaluated at every prefix up to L·T.
    t_if = sorted({T, LT})
    if_net = convert_qcfs_to_if(q, T=max(t_if))
    if_net.set_timesteps(max(t_if))
    prefix = evaluate_prefixes(if_net, test)
    for t in t_if:
        rows.append({"group": group, "method": "IF from QCFS", "T": t, "accuracy": prefix[t - 1],
                     "notes": "θ = ϑ, v0 = θ/2 (§3.2)" + (" - same T as LM-HT" if t == T else
                                                           " - same spike budget as L·T")})

    # Hybrid conversion: bias scale 1 (LMHT-C) and L (exact identity with the L·T-level QCFS net).
    nets = {}
    for scale, label in ((1, "biases as LMHT-C"), ("exact", f"biases ×L (= QCFS with L·T = {LT} levels)")):
        net, rep = convert_qcfs_to_lmht(q, levels=L, T=T, hybrid_bias_scale=scale, return_report=True)
        net.set_timesteps(T)
        acc = _final_accuracy(net, ctx)
        agree = _agreement(predictions(net, test), q_pred)
        note = f"hybrid init, {label}; same argmax as QCFS ANN: {100 * agree:.2f}%"
        rows.append({"group": group, "method": f"LM-HT init ({'×L' if scale == 'exact' else '×1'} bias)", "T": T,
                     "accuracy": acc, "notes": note, "levels": L, "hybrid_bias_scale": rep.bias_scale,
                     "agreement_with_qcfs": agree})
        nets[scale] = net

    net = nets["exact"]
    torch.manual_seed(cfg.seed)
    secs = train_classifier(net, ctx["train"], cfg.finetune_epochs, cfg.lmht_lr, f"LM-HT L={L} T={T} STBP",
                            cfg.progress)
    ft_acc = _final_accuracy(net, ctx)
    rows.append({"group": group, "method": "LM-HT fine-tuned (STBP)", "T": T, "accuracy": ft_acc,
                 "notes": f"from the ×L init, {cfg.finetune_epochs} epochs, Adam lr {cfg.lmht_lr:g}, cosine",
                 "levels": L, "finetune_s": round(secs, 2)})
    log(f"LM-HT L={L} T={T}: fine-tuned {ft_acc:.2f}% ({cfg.finetune_epochs} epochs, {secs:.1f} s)")

    # Reparameterisation to an L·T-step single-threshold IF network, and its agreement on the test set.
    rif, rep = reparameterize_lmht(net)
    rif.set_timesteps(LT)
    rif_acc = _final_accuracy(rif, ctx)
    # Static images: each network's DirectEncoder repeats the stem output over its own steps (T and L·T).
    agree = reparameterization_report(net, rif, [x for x, _ in test])
    rows.append({"group": group, "method": "IF reparameterised from LM-HT", "T": LT, "accuracy": rif_acc,
                 "notes": f"L·T steps; argmax agreement {agree.argmax_agreement:.4f}, spike-count agreement "
                          f"{agree.min_count_agreement:.4f} (worst layer)",
                 "argmax_agreement": agree.argmax_agreement, "count_agreement": agree.min_count_agreement,
                 "output_max_abs_diff": agree.output_max_abs_diff})
    ctx["sections"].append(f"{rep}\n{agree}")
    return rows


# ----------------------------------------------------------------------------------------------------
# QAC (algorithms.md §4)
# ----------------------------------------------------------------------------------------------------
def _calibration_batches(ctx: dict, size: int = 128) -> list[torch.Tensor]:
    calib = ctx["calib"]
    return [calib[i:i + size] for i in range(0, calib.shape[0], size)]


def qac_rows(cfg: DemoConfig, ctx: dict, log: Log) -> list[dict]:
    """QAT with learnable per-layer T_l, the mixed-timestep SNN before/after calibration, uniform-T QCFS."""
    group = "QAC: learned per-layer T_l, mixed-timestep SNN"
    test, calib = ctx["test"], ctx["calib"]

    def qat_run(latency_weight: float) -> tuple[torch.nn.Module, float, LatencyRegulariser | None]:
        torch.manual_seed(cfg.seed)
        net = copy.deepcopy(ctx["ann"])
        prepare_qat(net, param="t_alpha", alpha=cfg.qac_alpha, t=cfg.qac_t)
        quant = [p for m in net.modules() if isinstance(m, QACQuantizer) for p in m.parameters()]
        quant_ids = {id(p) for p in quant}
        weights = [p for p in net.parameters() if id(p) not in quant_ids]
        reg = (LatencyRegulariser(net, latency_weight, cfg.qac_latency_per_layer, example_input=calib[:8])
               if latency_weight > 0 else None)
        secs = train_classifier(net, ctx["train"], cfg.qac_epochs, cfg.qac_lr,
                                "QAT (t, α)" + (" + latency" if reg is not None else ""), cfg.progress,
                                params=[{"params": weights}, {"params": quant, "lr": cfg.qac_quantizer_lr}],
                                regulariser=reg)
        return net, secs, reg

    # Cross-entropy only (QAC's Alg. 1): t moves little from its start.
    ce, _, _ = qat_run(0.0)
    ce_acc = evaluate_prefixes(ce, test)[0]
    ce_T = [r["T"] for r in quantizer_summary(ce)]
    ce_t = [round(r["t"], 3) for r in quantizer_summary(ce)]
    qat, secs, reg = qat_run(cfg.qac_latency_weight)
    q_acc = evaluate_prefixes(qat, test)[0]
    summary = quantizer_summary(qat)
    T_l = [r["T"] for r in summary]
    T_str = "/".join(map(str, T_l))
    lat = (f"λ={cfg.qac_latency_weight:g}, w_l ∝ {cfg.qac_latency_per_layer}" if reg is not None
           else "no latency term")

    snn, report = to_mixed_timestep_snn(qat, align="aver+aver", example_input=calib[:64])
    avg = average_timestep(qat, weighted_by_ops={layer.source: layer.ops for layer in report.layers})
    log(f"QAC: quantized ANN {q_acc:.2f}% ({cfg.qac_epochs} epochs, {secs:.1f} s), T_l = {T_str}, average T "
        f"{avg.plain:.3f} (op-weighted {avg.op_weighted:.3f})")
    per_layer = [{"layer": r["layer"], "T": r["T"], "t": round(r["t"], 4), "alpha": round(r["alpha"], 4),
                  "bit_width": round(r["bit_width"], 4), "macs": layer.ops}
                 for r, layer in zip(summary, report.layers)]
    common = {"T_l": T_l, "average_T": avg.plain, "average_T_op_weighted": avg.op_weighted}
    rows = [{"group": group, "method": "QAC quantized ANN, cross-entropy only", "T": sum(ce_T) / len(ce_T),
             "accuracy": ce_acc, "notes": f"QAC's Alg. 1: T_l = {'/'.join(map(str, ce_T))} (t = {ce_t}) from t = "
                                          f"{cfg.qac_t:g}", "T_l": ce_T, "t": ce_t},
            {"group": group, "method": "QAC quantized ANN + latency term", "T": avg.plain, "accuracy": q_acc,
             "notes": f"ReLU ANN + {cfg.qac_epochs} epochs QAT ({lat}), (t, α) from ({cfg.qac_t:g}, "
                      f"{cfg.qac_alpha:g}); T_l = {T_str}, op-weighted avg T {avg.op_weighted:.2f}",
             "layers": per_layer, "latency": None if reg is None else reg.describe(), **common}]
    log(f"QAC: cross-entropy only T_l = {'/'.join(map(str, ce_T))} ({ce_acc:.2f}%); with the latency term "
        f"T_l = {T_str} ({q_acc:.2f}%)")

    snn_acc = _final_accuracy(snn, ctx)
    # The §4.4 invariant, measured: same predictions as the quantized ANN, and the calibration loss against
    # it before any step (0 up to float rounding of the folded BN, which can flip a rare level).
    agree = _agreement(predictions(snn, test), predictions(qat, test))
    exact = calibrate(copy.deepcopy(snn), qat, [calib[:256]], epochs=0, target="quantized").loss_before
    rows.append({"group": group, "method": "QAC mixed-T SNN (aver+aver)", "T": avg.plain, "accuracy": snn_acc,
                 "notes": f"T_l = {T_str}, no calibration; vs its quantized ANN {q_acc:.2f}%: "
                          f"{snn_acc - q_acc:+.2f} pp, same argmax {100 * agree:.2f}%, ½·MSE {exact:.1g}",
                 "agreement_with_quantized_ann": agree, "mse_to_quantized_ann": exact, **common})
    start = time.perf_counter()
    cal = calibrate(snn, qat, _calibration_batches(ctx), epochs=cfg.calib_epochs, lr=cfg.calib_lr,
                    target=cfg.calib_target)
    cal_acc = _final_accuracy(snn, ctx)
    rows.append({"group": group, "method": "QAC mixed-T SNN + calibration", "T": avg.plain, "accuracy": cal_acc,
                 "notes": f"v0, θ fitted to the {cfg.calib_target} ANN, {calib.shape[0]} unlabeled images, "
                          f"{cfg.calib_epochs} epochs: loss {cal.loss_before:.3g} -> {cal.loss_after:.3g}",
                 "calibration": {k: v for k, v in cal.to_dict().items() if k != "layers"}, **common})
    log(f"QAC: mixed-T SNN {snn_acc:.2f}%, calibrated {cal_acc:.2f}% ({time.perf_counter() - start:.1f} s)")

    # Uniform-T QCFS at the same (rounded) average T: plain conversion and with averaging alignment.
    T_u = max(1, math.floor(avg.plain + 0.5))
    q, q_ann_acc, _ = qcfs_ann(cfg, ctx, log)
    for align, label in ((None, "QCFS uniform T"), ("aver+aver", "QCFS uniform T + aver")):
        net, _ = to_uniform_snn(q, T=T_u, align=align)
        rows.append({"group": group, "method": label, "T": T_u, "accuracy": _final_accuracy(net, ctx),
                     "notes": f"the QCFS ANN (Q={cfg.qcfs_levels}, {q_ann_acc:.2f}%) at T = round(avg T)"
                              + ("" if align is None else ", layer inputs averaged"),
                     "align": align, "qcfs_levels": cfg.qcfs_levels})
    lines = ["QAC per-layer timesteps (t learned, T_l = round(t); α = θ_l of the SNN; MACs per sample and step):",
             f"{'layer':<6} {'t':>7} {'T_l':>4} {'bits':>5} {'alpha':>7} {'MACs':>9}"]
    lines += [f"{r['layer']:<6} {r['t']:7.3f} {r['T']:4d} {r['bit_width']:5.2f} {r['alpha']:7.3f} {r['macs']:9.0f}"
              for r in per_layer]
    lines.append(f"average T {avg.plain:.3f} (plain mean, QAC's number), {avg.op_weighted:.3f} (weighted by MACs)")
    ctx["sections"].append("\n".join(lines))
    return rows


# ----------------------------------------------------------------------------------------------------
# One-hot M-LIF (algorithms.md §5)
# ----------------------------------------------------------------------------------------------------
def _energy(snn: torch.nn.Module, x: torch.Tensor) -> dict:
    """DIET δ and energies (MLIF-P eq. (11), 45 nm) measured with multispike.metrics."""
    e = diet_energy(count_ops(snn, x))
    return {"delta": e["delta"], "e_ann_uj": e["e_ann_uj"], "e_snn_uj": e["e_snn_uj"],
            "r": {layer["name"]: layer["r"] for layer in e["layers"]}}


def lq_ann(cfg: DemoConfig, ctx: dict, log: Log, bits: int) -> tuple[torch.nn.Module, float]:
    """The calibrated b-bit log-quantized ANN (§5.4) of the ``mlif`` rows: ``(model, test accuracy %)``.

    A copy of the ReLU ANN with every ReLU followed by a :class:`~multispike.quant.logquant.LogQuant` (MLIF-C's
    order), α of each layer = the running maximum of the per-batch P99.7 over the 512 calibration images (4 batches
    of 128, MLIF-C's rule); no training. Cached in ``ctx`` per b.
    """
    from torch import nn

    from ..quant.logquant import LogQuant, calibrate_log_quant

    cache = ctx.setdefault("lq_ann", {})
    if bits not in cache:
        net = copy.deepcopy(ctx["ann"])
        relus = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU)]
        for name in relus:
            parent_name, _, attr = name.rpartition(".")
            parent = net.get_submodule(parent_name) if parent_name else net
            setattr(parent, attr, nn.Sequential(nn.ReLU(), LogQuant(bits=bits, percentile=99.7)))
        calibrate_log_quant(net, _calibration_batches(ctx), num_batches=len(_calibration_batches(ctx)))
        acc = evaluate_prefixes(net, ctx["test"])[0]
        log(f"LQ-ANN b={bits}: {acc:.2f}% (calibrated, no training)")
        cache[bits] = (net, acc)
    return cache[bits]


def mlif_rows(cfg: DemoConfig, ctx: dict, log: Log) -> list[dict]:
    """M-LIF at T = 1 from the calibrated b-bit LQ-ANN: the exact pairing S = 2^b − 1, the paper's S = 2, LIF (S = 1),
    each right after the hybrid init and after the same fine-tuning; the paper text's P90 init for reference."""
    b = cfg.mlif_bits
    S = cfg.mlif_lanes if cfg.mlif_lanes is not None else 2 ** b - 1
    group = f"One-hot M-LIF at T=1 vs the {b}-bit log-quantized ANN (exact pairing S = 2^b-1 = {2 ** b - 1})"
    test, calib = ctx["test"], ctx["calib"]
    lq, lq_acc = lq_ann(cfg, ctx, log, b)
    lq_pred = predictions(lq, test)
    alphas = [round(float(m.alpha), 4) for m in lq.modules() if type(m).__name__ == "LogQuant"]
    rows = [{"group": group, "method": f"LQ-ANN b={b} (calibrated)", "T": None, "accuracy": lq_acc,
             "notes": f"ReLU ANN + LogQuant ({2 ** b} codes, {2 ** b - 1} non-zero), α = P99.7 of 512 images: "
                      f"{'/'.join(f'{a:.2f}' for a in alphas)}; no training", "bits": b, "alpha": alphas}]
    recipe = (f"{cfg.finetune_epochs} epochs, Adam lr {cfg.mlif_lr:g} (MLIF-P's), cosine, triangle γ "
              f"{cfg.mlif_gamma:g}, no dropout (this CNN has no D positions)")
    stats = {}
    for lanes in dict.fromkeys((S, 2, 1)):
        exact = cfg.mlif_threshold_init == "logquant" and lanes == 2 ** b - 1
        if lanes == 1:
            name, pairing = "LIF (M-LIF S=1)", f"keeps only the top LQ level α (1 code vs {2 ** b})"
        elif exact:
            name, pairing = f"M-LIF S={lanes}", f"= LQ b={b} value by value ({lanes + 1} codes each)"
        else:
            name, pairing = f"M-LIF S={lanes}", (f"the paper's pairing with b={b}: {lanes + 1} codes vs {2 ** b}"
                                                 if lanes == 2 else f"{lanes + 1} codes vs {2 ** b}")
        torch.manual_seed(cfg.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a silent layer's fallback is reported in the init report
            snn, rep = mlif_hybrid_init(lq, [calib], lanes=lanes, threshold_init=cfg.mlif_threshold_init, T=1,
                                        neuron_kwargs=dict(gamma=cfg.mlif_gamma))
        snn.set_timesteps(1)
        init_acc = _final_accuracy(snn, ctx)
        agree = _agreement(predictions(snn, test), lq_pred)
        rule = ("θ = α·2^(1/2-S), spike worth √2·θ·2^s, floor lanes, fire on >=" if cfg.mlif_threshold_init == "logquant"
                else f"{cfg.mlif_threshold_init} rule")
        rows.append({"group": group, "method": f"{name} hybrid init", "T": 1, "accuracy": init_acc,
                     "notes": f"{pairing}; {rule}; same argmax as LQ-ANN: {100 * agree:.2f}%",
                     "lanes": lanes, "exact": rep.exact, "agreement_with_lq": agree, "thresholds": rep.thresholds,
                     "payload_scales": {e["name"]: e["payload_scale"] for e in rep.layers}})
        if lanes == S:
            ctx["sections"].append(str(rep))
        torch.manual_seed(cfg.seed)
        secs = train_classifier(snn, ctx["train"], cfg.finetune_epochs, cfg.mlif_lr, f"{name} fine-tune",
                                cfg.progress)
        acc = _final_accuracy(snn, ctx)
        st = spike_statistics(snn, calib[:256])
        energy = _energy(snn, calib[:256])
        note = recipe + (f"; δ = E_ANN/E_SNN = {energy['delta']:.2f}")
        rows.append({"group": group, "method": f"{name} fine-tuned", "T": 1, "accuracy": acc, "notes": note,
                     "lanes": lanes, "finetune_s": round(secs, 2),
                     "spike_events": {k: v["events"] for k, v in st.items()},
                     "active_lanes": {k: v["active_lanes"] for k, v in st.items()},
                     "payload_values": {k: v["values"] for k, v in st.items()},
                     "energy": energy})
        stats[lanes] = (st, energy)
        log(f"{name}: init {init_acc:.2f}% (LQ-ANN b={b} {lq_acc:.2f}%, argmax agreement {agree:.4f}), fine-tuned "
            f"{acc:.2f}% ({cfg.finetune_epochs} epochs, {secs:.1f} s)")

    # The paper text's P90 rule from the ReLU ANN, for reference: only 10 % of each layer's inputs fire.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p90, _ = mlif_hybrid_init(ctx["ann"], [calib], lanes=S, threshold_init="percentile", T=1)
    p90.set_timesteps(1)
    p90_acc = _final_accuracy(p90, ctx)
    rows.append({"group": group, "method": f"M-LIF S={S} P90 init (paper text)", "T": 1, "accuracy": p90_acc,
                 "notes": "from the ReLU ANN: lowest edge at P90 of each layer's input current, spike worth θ·2^s; "
                          "not fine-tuned", "lanes": S, "threshold_init": "percentile"})
    log(f"M-LIF S={S} with the P90 rule: {p90_acc:.2f}% right after init")

    layers = list(next(iter(stats.values()))[0])
    lines = ["M-LIF/LIF at T=1 after fine-tuning, per layer on 256 training images:",
             "events = value-weighted spikes per neuron (payload 2^s counts 2^s), lanes = fired lanes per neuron",
             f"{'S':<3} {'stat':<8} " + "  ".join(f"{n:>8}" for n in layers)]
    for lanes, (st, energy) in stats.items():
        lines.append(f"{lanes:<3} {'events':<8} " + "  ".join(f"{st[n]['events']:8.4f}" for n in layers))
        lines.append(f"{lanes:<3} {'lanes':<8} " + "  ".join(f"{st[n]['active_lanes']:8.4f}" for n in layers))
        values = sorted({v for n in layers for v in st[n]["values"]})
        lines.append(f"{lanes:<3} {'payloads':<8} {values}")
        lines.append(f"{lanes:<3} {'energy':<8} E_SNN {energy['e_snn_uj']:.4f} µJ vs E_ANN "
                     f"{energy['e_ann_uj']:.4f} µJ per image (45 nm, first layer as MACs): "
                     f"δ = {energy['delta']:.2f}")
    ctx["sections"].append("\n".join(lines))
    return rows


# The registry, written out: the demo runs exactly these producers (in cfg.rows order, "if" first), nothing registers
# itself as a side effect of an import.
ROWS: dict[str, RowProducer] = {"if": if_rows, "lmht": lmht_rows, "qac": qac_rows, "mlif": mlif_rows}


def register_row(name: str, producer: RowProducer | None = None):
    """Add a row producer under ``name`` (usable as a decorator); ``cfg.rows`` can then name it.

    Raises:
        ValueError: ``name`` is already registered.
    """
    def add(fn: RowProducer) -> RowProducer:
        if name in ROWS:
            raise ValueError(f"register_row: a demo row named {name!r} is already registered ({ROWS[name].__name__})")
        ROWS[name] = fn
        return fn

    return add(producer) if producer is not None else add
