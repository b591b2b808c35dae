"""Evaluation of a (spiking) classifier with spike statistics, op counts and energy, saved as a report.

* :func:`evaluate` runs a model over an evaluation set and returns an :class:`EvalResult`: accuracy at every
  timestep prefix ``t ≤ T`` (from the per-step outputs, accumulated over time and arg-maxed, as LM-HT
  reports it), per-layer spike rates and timesteps (:class:`~multispike.metrics.SpikeMonitor`), the op table
  (:class:`~multispike.metrics.OpCounter`) and every energy convention (:func:`~multispike.metrics.energy_report`).
* :func:`write_report` writes ``result.json``, ``report.md`` and PNG plots.
* :func:`compare_reports` puts several runs in one table and plot.

Size (over 450 lines): :func:`evaluate` and the saved report of one evaluation (text, JSON, Markdown, plots)
write one record several ways; splitting would separate the record from its formats.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .._errors import ParameterError
from .._text import percent as _pct
from .._validate import check_positive_int
from ..layers import DirectEncoder, MeanOverTime
from ..neurons.base import reset_net
from .energy import MemoryModel, energy_report
from .monitors import SpikeMonitor
from .opcount import OpCounter, OpCountResult, format_count
from .prefix import prefix_correct, tta_views
from . import plots

__all__ = ["EvalResult", "evaluate", "write_report", "compare_reports", "load_result", "INPUT_MODES"]

INPUT_MODES = ("auto", "repeat", "time_major", "batch_first", "model")


@dataclass
class EvalResult:
    """Everything :func:`evaluate` measured; ``to_dict()`` is what ``result.json`` holds."""

    name: str
    samples: int
    T: int | None
    accuracy: float
    accuracy_vs_T: list[tuple[int, float]]
    spikes: dict[str, Any] | None = None
    layer_timesteps: dict[str, int] = field(default_factory=dict)
    ops: dict[str, Any] | None = None
    energy: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "multispike-eval/1", "name": self.name, "samples": self.samples, "T": self.T,
                "accuracy": self.accuracy, "accuracy_vs_T": [[int(t), float(a)] for t, a in self.accuracy_vs_T],
                "spikes": self.spikes, "layer_timesteps": self.layer_timesteps, "ops": self.ops,
                "energy": self.energy, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EvalResult":
        if "accuracy_vs_T" not in d or "name" not in d:
            raise ValueError("not a multispike evaluation result (missing 'name'/'accuracy_vs_T'); expected the "
                             "result.json written by write_report or `multispike eval`")
        return cls(name=d["name"], samples=int(d.get("samples", 0)), T=d.get("T"), accuracy=float(d["accuracy"]),
                   accuracy_vs_T=[(int(t), float(a)) for t, a in d["accuracy_vs_T"]], spikes=d.get("spikes"),
                   layer_timesteps=dict(d.get("layer_timesteps") or {}), ops=d.get("ops"), energy=d.get("energy"),
                   meta=dict(d.get("meta") or {}))


def load_result(path: str | os.PathLike) -> EvalResult:
    """Read a ``result.json`` (or the directory that holds one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    if not p.is_file():
        raise FileNotFoundError(f"no evaluation result at {p}; pass a result.json written by `multispike eval`")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from exc
    return EvalResult.from_dict(data)


# ---------------------------------------------------------------------------------------------- evaluation
def _resolve_mode(model: nn.Module, mode: str, T_max: int | None) -> str:
    if mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {mode!r}")
    if mode != "auto":
        if mode == "repeat" and T_max is None:
            raise ValueError("input_mode='repeat' (direct encoding by evaluate) needs T_max")
        return mode
    self_encoding = hasattr(model, "set_timesteps") or any(isinstance(m, DirectEncoder) for m in model.modules())
    if self_encoding or T_max is None:
        return "model"
    return "repeat"


class _Timesteps:
    """Temporarily set the timesteps of a model that encodes its own input (restored on exit)."""

    def __init__(self, model: nn.Module, T: int | None) -> None:
        self.model, self.T, self.saved = model, T, []

    def __enter__(self):
        if self.T is None:
            return self
        if hasattr(self.model, "set_timesteps"):
            self.saved.append(("set", getattr(self.model, "T", None)))
            self.model.set_timesteps(self.T)
        else:
            for m in self.model.modules():
                if isinstance(m, DirectEncoder):
                    self.saved.append((m, m.T))
                    m.T = self.T
        return self

    def __exit__(self, *exc):
        for owner, T in self.saved:
            if owner == "set":
                if T is not None:
                    self.model.set_timesteps(T)
            else:
                owner.T = T


def _prepare(x: torch.Tensor, mode: str, T_max: int | None) -> torch.Tensor:
    if mode == "repeat":
        return x.unsqueeze(0).expand(T_max, *x.shape)
    if mode == "batch_first":
        if x.dim() < 2:
            raise ValueError(f"input_mode='batch_first' needs [B, T, ...] inputs, got shape {tuple(x.shape)}")
        return x.transpose(0, 1).contiguous()
    if mode == "time_major" and T_max is not None and x.shape[0] > T_max:
        return x[:T_max]
    return x


def _per_step_outputs(model: nn.Module, inp: torch.Tensor, counter: OpCounter | None) -> tuple[torch.Tensor, bool]:
    """Per-step logits ``[T, B, C]`` and whether they are genuinely per step."""
    if hasattr(model, "forward_sequence"):
        if counter is not None:
            counter.begin_forward((inp,))
        try:
            out = model.forward_sequence(inp)
        finally:
            if counter is not None:
                counter.end_forward()
        return out, out.dim() == 3
    captured: list[torch.Tensor] = []
    handles = [m.register_forward_hook(lambda mod, a, o: captured.append(a[0]))
               for m in model.modules() if isinstance(m, MeanOverTime)]
    try:
        out = model(inp)
    finally:
        for h in handles:
            h.remove()
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"evaluate: the model returned {type(out).__name__}; expected logits as a tensor")
    if captured and captured[-1].dim() == out.dim() + 1 and captured[-1].shape[1:] == out.shape:
        return captured[-1], True
    if out.dim() == 3:
        return out, True
    if out.dim() == 2:
        return out.unsqueeze(0), False
    raise ValueError(f"evaluate: logits must be [B, classes] or [T, B, classes], got shape {tuple(out.shape)}")


def evaluate(model: nn.Module, data: Iterable, T_max: int | None = None, *, input_mode: str = "auto",
             device: str | torch.device | None = None, max_batches: int | None = None,
             count_ops: bool = True, op_batches: int | None = None, monitor: bool = True, membrane: bool = False,
             energy: Any = "45nm", encoding: str = "static", input_events: str | None = None,
             memory: MemoryModel | None | bool = None, neurobench: bool = True, name: str | None = None,
             progress: bool = False, meta: Mapping[str, Any] | None = None, tta_flip: bool = False,
             tta_translate: bool = False) -> EvalResult:
    """Evaluate a classifier over ``data`` with spike statistics, op counts and energy.

    Args:
        model: the network. Neuron state is reset before every batch; the model is put in eval mode (and
            restored afterwards).
        data: an iterable of ``(inputs, targets)`` batches (a ``DataLoader`` or a list); targets are class
            indices ``[B]``.
        T_max: timesteps. With ``input_mode="repeat"`` a static batch ``[B, ...]`` is repeated ``T_max`` times
            (direct encoding); a model that encodes its own input (``set_timesteps`` or a ``DirectEncoder``)
            is set to ``T_max`` for the run.
        input_mode: ``"repeat"``, ``"time_major"`` (inputs already ``[T, B, ...]``), ``"batch_first"``
            (``[B, T, ...]``, transposed), ``"model"`` (passed as is) or ``"auto"`` (``"model"`` for
            self-encoding models or when ``T_max`` is None, else ``"repeat"``).
        device: where to run (default: the model's device).
        max_batches: stop after this many batches.
        count_ops: run an :class:`OpCounter` (on the first ``op_batches`` batches; all by default).
        monitor: run a :class:`SpikeMonitor` (``membrane=True`` adds membrane statistics).
        energy, encoding, memory: energy constants, ``"static"``/``"dvs"`` and the memory model
            (:func:`energy_report`).
        input_events: pass ``"count"``/``"binary"`` when the input itself is a spike train (event frames).
        neurobench: also compute the NeuroBench-compatible op counts.
        name: the run's name in reports.
        progress: show a tqdm progress bar.
        meta: extra fields recorded in the result (model name, dataset, ...).
        tta_flip: flip test-time augmentation: the accuracy uses the mean of the per-step logits of each input
            and of its left-right mirror (``x.flip(-1)``, the same readout as the trainer's ``tta_flip``). Spike
            statistics, op counts and energy describe the unflipped pass only, i.e. one inference; with TTA an
            inference costs two such passes.
        tta_translate: also one-pixel shifted views (airbench94's ``tta_level=2``;
            :func:`~multispike.metrics.prefix.tta_views`): 3 passes per inference, 6 with ``tta_flip``.

    Accuracy at prefix t is ``argmax Σ_{s≤t} o(s)`` over the per-step outputs (the ``MeanOverTime`` input or
    ``forward_sequence``), which is what a causal network emits after t steps. LM-HT's T-GIM is non-causal,
    so for it the prefix numbers describe the full-T run truncated, not a shorter run.

    Raises:
        ValueError: the evaluation set is empty, or a bad argument.
    """
    if T_max is not None:
        T_max = check_positive_int(T_max, "T_max", fix="Use T_max >= 1 timesteps or None.")
    if max_batches is not None:
        max_batches = check_positive_int(max_batches, "max_batches")
    mode = _resolve_mode(model, input_mode, T_max)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    mon = SpikeMonitor(model, membrane=membrane) if monitor else None
    counter = OpCounter(model, input_events=input_events, neurobench=neurobench) if count_ops else None
    correct: list[float] = []
    total = 0
    per_step_ok = True
    batches = 0
    t0 = time.perf_counter()
    iterator = data
    if progress:
        from tqdm import tqdm
        iterator = tqdm(data, desc=name or "eval", unit="batch", leave=False)
    try:
        with torch.no_grad(), _Timesteps(model, T_max if mode == "model" else None):
            if mon is not None:
                mon.attach()
            for batch in iterator:
                if max_batches is not None and batches >= max_batches:
                    break
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError("evaluate: each batch must be (inputs, targets); got "
                                     f"{type(batch).__name__}")
                x, y = batch[0], batch[1]
                x = torch.as_tensor(x).to(device)
                y = torch.as_tensor(y).to(device).long()
                inp = _prepare(x, mode, T_max)
                reset_net(model)
                use_counter = counter is not None and (op_batches is None or batches < op_batches)
                if use_counter:
                    counter.attach()
                try:
                    steps, genuine = _per_step_outputs(model, inp, counter if use_counter else None)
                finally:
                    if use_counter:
                        counter.detach()
                per_step_ok &= genuine
                if tta_flip or tta_translate:   # extra views run unobserved: the statistics stay one inference's
                    if mon is not None:
                        mon.detach()
                    views = tta_views(inp, flip=tta_flip, translate=tta_translate)
                    steps = views[0][0] * steps.float()
                    for w, view in views[1:]:
                        reset_net(model)
                        more, _ = _per_step_outputs(model, view, None)
                        steps = steps + w * more.float()
                    if mon is not None:
                        mon.attach()
                if steps.dim() != 3 or steps.shape[1] != y.shape[0]:
                    raise ValueError(f"evaluate: per-step logits have shape {tuple(steps.shape)}, expected "
                                     f"[T, {y.shape[0]}, classes] for a batch of {y.shape[0]} targets")
                hits = prefix_correct(steps, y).tolist()               # the package's one prefix readout
                if len(correct) < len(hits):
                    correct.extend([0.0] * (len(hits) - len(correct)))
                for t, h in enumerate(hits):
                    correct[t] += h
                total += y.shape[0]
                batches += 1
    finally:
        if mon is not None:
            mon.detach()
        reset_net(model)
        model.train(was_training)
    if total == 0:
        raise ParameterError("evaluate: the evaluation set is empty (no batch was produced); check the dataset "
                             "path, the split and {max_batches}", "max_batches")
    elapsed = time.perf_counter() - t0
    T_out = len(correct)
    if per_step_ok:
        curve = [(t + 1, correct[t] / total) for t in range(T_out)]
    else:
        curve = [(T_max or T_out, correct[-1] / total)]
    ops_res: OpCountResult | None = counter.result() if counter is not None else None
    energy_d = None
    if ops_res is not None and ops_res.synaptic:
        energy_d = energy_report(ops_res, energy, encoding, memory)
    spikes = mon.summary() if mon is not None else None
    info = {"input_mode": mode, "device": str(device), "batches": batches, "elapsed_s": round(elapsed, 3),
            "samples_per_s": round(total / elapsed, 2) if elapsed > 0 else None, "per_step_outputs": per_step_ok,
            "encoding": encoding, "input_events": input_events, "tta_flip": bool(tta_flip), "tta_translate": bool(tta_translate), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds")}
    from .. import __version__ as version  # at call time: the root package may still be initialising at import
    info["multispike"] = version
    info.update(dict(meta or {}))
    return EvalResult(name=name or type(model).__name__, samples=total, T=T_max if T_max is not None else T_out,
                      accuracy=correct[-1] / total, accuracy_vs_T=curve, spikes=spikes,
                      layer_timesteps=mon.layer_timesteps() if mon is not None else {},
                      ops=ops_res.to_dict() if ops_res is not None else None, energy=energy_d, meta=info)


# ---------------------------------------------------------------------------------------------- reports
def _as_result(r: EvalResult | Mapping[str, Any] | str | os.PathLike) -> EvalResult:
    if isinstance(r, EvalResult):
        return r
    if isinstance(r, Mapping):
        return EvalResult.from_dict(r)
    return load_result(r)


def _num(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and (math.isnan(v) or math.isinf(v))):
        return "-"
    return f"{v:.{digits}g}"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _energy_rows(e: Mapping[str, Any]) -> list[list[str]]:
    diet, ms, sop, nb = e["diet"], e["multispike"], e["lmht_sop"], e["neurobench"]
    rows = [
        ["ANN, iso-architecture (dense MACs)", _num(diet["e_ann_uj"]), "-", "E_MAC x MACs per step"],
        [f"DIET / M-LIF eq. (11), {diet['encoding']}", _num(diet["e_snn_uj"]), _num(diet["delta"], 3),
         "r_l x #ANN_ops; first layer MAC (static) or all AC (dvs)"],
        ["multispike (value-weighted)", _num(ms["e_uj"]), _num(ms["delta"], 3),
         "analog MACs + events x exact fan-out + additions"],
        ["LM-HT / Spikformer SOPs", _num(sop["e_uj"]), "-", "E_AC x SOPs, first layer excluded, spike counts"],
        ["NeuroBench effective ops", _num(nb["e_uj"]), "-", "binarised inputs; {-1,0,1} inputs count as AC"],
    ]
    if "sdt" in e:
        rows.append(["spike-driven transformer [verify]", _num(e["sdt"]["e_uj"]), "-",
                     "E_MAC FL1 + E_AC sum FL r + E_SDSA"])
    return rows


def write_report(result: EvalResult | Mapping[str, Any], out_dir: str | os.PathLike,
                 plots_enabled: bool = True) -> dict[str, str]:
    """Write ``result.json``, ``report.md`` and PNG plots into ``out_dir``; returns ``{kind: path}``."""
    res = _as_result(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    d = res.to_dict()
    (out / "result.json").write_text(json.dumps(d, indent=1, allow_nan=False))
    paths["json"] = str(out / "result.json")
    layers = (res.spikes or {}).get("layers", [])
    if plots_enabled:
        paths["accuracy_plot"] = plots.plot_accuracy_vs_T({res.name: res.accuracy_vs_T}, out / "accuracy_vs_T.png",
                                                          title=f"{res.name}: accuracy vs timesteps")
        if layers:
            paths["rates_plot"] = plots.plot_layer_rates(layers, out / "layer_rates.png")
            paths["timesteps_plot"] = plots.plot_layer_timesteps(layers, out / "layer_timesteps.png")
        if res.energy:
            paths["energy_plot"] = plots.plot_energy_breakdown(res.energy, out / "energy.png")
    md = [f"# Evaluation report: {res.name}", ""]
    meta = res.meta
    md += _md_table(["field", "value"], [
        ["samples", res.samples], ["timesteps T", res.T], ["accuracy at T", f"{_pct(res.accuracy)} %"],
        *[[k, v] for k, v in meta.items() if not isinstance(v, (dict, list))]])
    md += ["", "## Accuracy vs timesteps", ""]
    if not meta.get("per_step_outputs", True):
        md += ["The model exposes no per-step outputs (no `MeanOverTime` readout or `forward_sequence`), so only "
               "the accuracy at T is reported.", ""]
    md += _md_table(["t", "accuracy (%)"], [[t, _pct(a)] for t, a in res.accuracy_vs_T])
    if "accuracy_plot" in paths:
        md += ["", "![accuracy vs T](accuracy_vs_T.png)"]
    if layers:
        md += ["", "## Per-layer spike statistics", "",
               "spike rate = active lanes / (N·T); count rate = unit events / (N·T·L); payload rate = Σ|y| / (N·T).",
               ""]
        md += _md_table(["layer", "type", "T", "declared T", "neurons", "L", "spike rate", "count rate",
                         "payload rate", "events / sample"],
                        [[l["name"], l["type"], l["T"], l["declared_T"] if l["declared_T"] is not None else "-",
                          l["neurons"], l["levels"], _num(l["spike_rate"]), _num(l["count_rate"]),
                          _num(l["payload_rate"]), format_count(l["events_per_sample"])] for l in layers])
        tot = res.spikes["total"]
        md += ["", f"Network: {tot['spiking_layers']} spiking layers, {tot['neurons']} neurons, overall spike rate "
                   f"{_num(tot['spike_rate'])}, {format_count(tot['events_per_sample'])} events per sample."]
        if "rates_plot" in paths:
            md += ["", "![per-layer rates](layer_rates.png)", "", "![per-layer timesteps](layer_timesteps.png)"]
    if res.ops:
        ops = OpCountResult.from_dict(res.ops)
        md += ["", "## Operations per sample", "", "Conventions:", ""]
        md += [f"- **{k}**: {v}" for k, v in ops.conventions.items()]
        md += ["", ops.table()]
        if ops.not_counted:
            md += ["", "Not counted (zero synaptic cost by convention):", ""]
            md += [f"- {t} x{v['count']}: {v['reason']}" for t, v in ops.not_counted.items()]
        if not ops.unsupported:
            md += ["", "Unsupported layers: none."]
    if res.energy:
        e = res.energy
        c = e["constants"]
        md += ["", "## Energy per sample", "",
               f"Constants `{c['name']}`: E_MAC = {c['e_mac']} pJ, E_AC = {c['e_ac']} pJ ({c['source']}).", ""]
        if res.spikes is not None and not res.spikes.get("layers"):
            md += ["This model has no spiking neurons: only the ANN row and the multispike count (which prices "
                   "what actually ran) describe it; the SNN conventions below apply their formulas regardless.", ""]
        md += _md_table(["convention", "energy (µJ)", "δ = E_ANN / E", "definition"], _energy_rows(e))
        if "memory" in e:
            m = e["memory"]
            md += ["", f"Memory accesses - **{m['label']}** (MLIF-P App. A.5 is cut off; this does not reproduce its "
                       f"Table 6): SNN {_num(m['snn']['e_uj'])} µJ (weights {_num(m['snn']['weights_uj'])}, membrane "
                       f"{_num(m['snn']['membrane_uj'])}, outputs {_num(m['snn']['outputs_uj'])}); ANN "
                       f"{_num(m['ann']['e_uj'])} µJ."]
        if "energy_plot" in paths:
            md += ["", "![energy](energy.png)"]
    (out / "report.md").write_text("\n".join(md) + "\n")
    paths["markdown"] = str(out / "report.md")
    return paths


def compare_reports(results: Sequence[EvalResult | Mapping[str, Any] | str | os.PathLike], out_dir: str | os.PathLike,
                    names: Sequence[str] | None = None) -> dict[str, str]:
    """Put several runs side by side: ``comparison.json``, ``comparison.md``, ``comparison_accuracy.png`` and
    ``comparison_energy.png`` (when every run has energy numbers)."""
    runs = [_as_result(r) for r in results]
    if not runs:
        raise ValueError("compare_reports: no runs given; pass result.json paths or EvalResult objects")
    labels = list(names) if names is not None else [r.name for r in runs]
    if len(labels) != len(runs):
        raise ValueError(f"compare_reports: {len(labels)} names for {len(runs)} runs")
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):  # duplicate names would overwrite each other in the plots
        if lab in seen:
            seen[lab] += 1
            labels[i] = f"{lab} ({seen[lab]})"
        else:
            seen[lab] = 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, str] = {}
    rows, table, energies = [], [], {}
    for lab, r in zip(labels, runs):
        tot = (r.spikes or {}).get("total", {})
        e = dict(r.energy or {})
        if r.spikes is not None and not r.spikes.get("layers"):
            # No spiking neuron: the SNN conventions (DIET r_l, SOPs) say nothing about this run.
            e.pop("diet", None), e.pop("lmht_sop", None)
            e["diet"] = {"e_ann_uj": (r.energy or {}).get("diet", {}).get("e_ann_uj")}
        energies[lab] = e
        row = {"name": lab, "samples": r.samples, "T": r.T, "accuracy": r.accuracy,
               "spike_rate": tot.get("spike_rate"),
               "dense_macs_per_step": (r.ops or {}).get("totals", {}).get("dense_macs_per_step"),
               "e_ann_uj": e.get("diet", {}).get("e_ann_uj"), "e_diet_uj": e.get("diet", {}).get("e_snn_uj"),
               "delta_diet": e.get("diet", {}).get("delta"), "e_multispike_uj": e.get("multispike", {}).get("e_uj"),
               "e_sop_uj": e.get("lmht_sop", {}).get("e_uj"), "e_neurobench_uj": e.get("neurobench", {}).get("e_uj")}
        rows.append(row)
        table.append([lab, r.samples, r.T, _pct(r.accuracy), _num(row["spike_rate"]),
                      format_count(row["dense_macs_per_step"]), _num(row["e_ann_uj"]), _num(row["e_diet_uj"]),
                      _num(row["delta_diet"], 3), _num(row["e_multispike_uj"]), _num(row["e_sop_uj"]),
                      _num(row["e_neurobench_uj"])])
    (out / "comparison.json").write_text(json.dumps({"runs": rows}, indent=1, allow_nan=False))
    paths["json"] = str(out / "comparison.json")
    paths["accuracy_plot"] = plots.plot_accuracy_vs_T({lab: r.accuracy_vs_T for lab, r in zip(labels, runs)},
                                                      out / "comparison_accuracy.png", title="Accuracy vs timesteps")
    if all(r.energy for r in runs):
        paths["energy_plot"] = plots.plot_energy_comparison(energies, out / "comparison_energy.png")
    md = ["# Comparison", ""]
    md += _md_table(["run", "samples", "T", "acc (%)", "spike rate", "MACs/step", "E_ANN (µJ)", "E_DIET (µJ)",
                     "δ DIET", "E_multispike (µJ)", "E_SOP (µJ)", "E_NeuroBench (µJ)"], table)
    md += ["", "## Accuracy (%) at every timestep prefix", ""]
    steps = sorted({t for r in runs for t, _ in r.accuracy_vs_T})
    md += _md_table(["t"] + labels, [[t] + [next((_pct(a) for tt, a in r.accuracy_vs_T if tt == t), "-") for r in runs]
                                     for t in steps])
    md += ["", "![accuracy](comparison_accuracy.png)"]
    if "energy_plot" in paths:
        md += ["", "![energy](comparison_energy.png)"]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    paths["markdown"] = str(out / "comparison.md")
    return paths
