"""PNG plots for evaluation reports (matplotlib, Agg canvas).

Figures are drawn on :class:`matplotlib.figure.Figure` with an Agg canvas directly, never through
``pyplot``, so importing this module neither changes the user's backend nor needs a display.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

__all__ = ["plot_accuracy_vs_T", "plot_layer_rates", "plot_layer_timesteps", "plot_energy_breakdown",
           "plot_energy_comparison", "layer_rate_labels", "energy_layer_labels", "RATE_AXIS_LABEL",
           "ENERGY_AXIS_LABEL"]


def _figure(width: float = 7.0, height: float = 4.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a declared dependency of reports
        raise ImportError("plots need matplotlib: pip install matplotlib") from exc
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", bbox_inches="tight")  # keeps legends placed outside the axes
    return path


def _short(names: Sequence[str], width: int = 18) -> list[str]:
    return [n if len(n) <= width else "…" + n[-(width - 1):] for n in names]


#: x-axis label of the per-layer plots: both name a layer by its spiking neuron module, so the rate bar of a neuron
#: and the energy bars of the operations its spikes drive carry the same name
RATE_AXIS_LABEL = "spiking layer (neuron module)"
ENERGY_AXIS_LABEL = "spiking layer whose spikes drive it → operation (input: fed by no spiking layer)"


def layer_rate_labels(layers: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tick labels of :func:`plot_layer_rates` / :func:`plot_layer_timesteps`: the neuron module names."""
    return _short([l["name"] for l in layers])


def energy_layer_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tick labels of the per-layer energy bars, in the rate plot's naming: ``"<neuron> → <op type>"``.

    A synaptic or addition layer's energy is driven by the spikes it receives, so its bar is named after the
    spiking layer that feeds it (``input_source``; ``input`` for the encoded input, e.g. the first conv). Two
    bars that would read alike (one neuron feeding two convs, e.g. a residual shortcut) add the module name.
    Rows written before ``input_source`` was recorded fall back to the module name.
    """
    if not rows or "input_source" not in rows[0]:
        return _short([r["name"] for r in rows])
    labels = [f"{_short([r['input_source']])[0] if r.get('input_source') else 'input'} → {r['type']}" for r in rows]
    counts = {l: labels.count(l) for l in labels}
    return [f"{l} ({_short([r['name']])[0]})" if counts[l] > 1 else l for l, r in zip(labels, rows)]


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def plot_accuracy_vs_T(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | os.PathLike,
                       title: str = "Accuracy vs timesteps") -> str:
    """One line per run: accuracy (%) at every timestep prefix t."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    markers, styles = "os^Dv<>p", ("-", "--", ":", "-.")
    # a single-step run (an ANN) next to multi-step runs is a reference level, not a one-point curve
    multi = any(len(p) > 1 for p in curves.values())
    for i, (name, pts) in enumerate(curves.items()):
        if not pts:
            continue
        ts, acc = zip(*pts)
        if multi and len(pts) == 1:
            ax.axhline(100 * acc[0], color="0.35", linestyle="--", linewidth=1.2, label=f"{name} (reference)")
            continue
        # Distinct markers and dashes: runs with equal prefixes (e.g. T=4 vs T=16 of one SNN) overlap exactly.
        ax.plot(ts, [100 * a for a in acc], marker=markers[i % len(markers)], linestyle=styles[i % len(styles)],
                markersize=7 - min(i, 3), label=name)
    ax.set_xlabel("timesteps t (prefix)")
    # t is a count: ticks at the measured prefixes (no 0.96 ... 1.04 ticks around a single-step run)
    steps = sorted({int(t) for pts in curves.values() for t, _ in pts})
    if steps and len(steps) <= 16:
        ax.set_xticks(steps)
        if len(steps) == 1:
            ax.set_xlim(steps[0] - 1, steps[0] + 1)
    else:
        _integer_axis(ax.xaxis)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if any(curves.values()):
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def plot_layer_rates(layers: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                     title: str = "Per-layer spike statistics") -> str:
    """Grouped bars per spiking layer: lane spike rate, count rate and event rate (x labels:
    :func:`layer_rate_labels`)."""
    layers = list(layers)
    names = layer_rate_labels(layers)
    fig = _figure(max(6.0, 0.45 * len(names) + 2), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    # L = the levels of a multi-level neuron or the lanes S of a one-hot M-LIF (a fired lane is one event)
    keys = [("spike_rate", "spike rate (fired / N·T)"), ("count_rate", "count rate (spike count / N·T·L, L = levels "
                                                                       "or lanes)"),
            ("event_rate", "events / N·T")]
    width = 0.8 / len(keys)
    for j, (k, label) in enumerate(keys):
        vals = [l.get(k) or 0.0 for l in layers]
        ax.bar([i + (j - 1) * width for i in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel(RATE_AXIS_LABEL, fontsize=8)
    ax.set_ylabel("rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_layer_timesteps(layers: Iterable[Mapping[str, Any]], path: str | os.PathLike,
                         title: str = "Per-layer timesteps") -> str:
    """Bars of the observed T of every spiking layer (differs across layers in mixed-timestep models)."""
    layers = list(layers)
    names = layer_rate_labels(layers)
    fig = _figure(max(6.0, 0.4 * len(names) + 2), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(names)), [l.get("T") or 0 for l in layers], color="tab:purple")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel(RATE_AXIS_LABEL, fontsize=8)
    ax.set_ylabel("T (timesteps)")
    _integer_axis(ax.yaxis)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def plot_energy_breakdown(energy: Mapping[str, Any], path: str | os.PathLike,
                          title: str = "Energy per sample") -> str:
    """Left: per-layer energy of the value-weighted (multispike) count, stacked MAC / AC / additions, each bar
    named after the spiking layer that drives it (:func:`energy_layer_labels`, the rate plot's naming).
    Right: total energy under every convention next to the iso-architecture ANN."""
    fig = _figure(11.0, 4.6)
    ax = fig.add_subplot(1, 2, 1)
    rows = energy["multispike"]["layers"]
    names = energy_layer_labels(rows)
    bottom = [0.0] * len(rows)
    for key, label in (("e_mac_uj", "MAC (analog input)"), ("e_ac_uj", "AC (spike input)"), ("e_add_uj", "additions")):
        vals = [r[key] for r in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    if rows and "input_source" in rows[0]:
        ax.set_xlabel(ENERGY_AXIS_LABEL, fontsize=8)
    ax.set_ylabel("µJ per sample")
    if max(bottom, default=0.0) > 0:
        ax.set_ylim(0, 1.3 * max(bottom))   # headroom: the legend sits above the tallest bar, not on it
    ax.set_title(f"{title}: per layer (multispike count, {energy['constants']['name']})", fontsize=9)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    ax.grid(True, axis="y", alpha=0.3)
    ax2 = fig.add_subplot(1, 2, 2)
    labels, vals = _energy_totals(energy)
    ax2.bar(range(len(labels)), vals, color=["tab:gray"] + ["tab:blue"] * (len(labels) - 1))
    ax2.set_xticks(range(len(labels)))
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("µJ per sample")
    ax2.set_title("totals by convention", fontsize=9)
    ax2.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _energy_totals(energy: Mapping[str, Any]) -> tuple[list[str], list[float]]:
    labels = ["ANN (MAC)", "DIET SNN", "multispike", "LM-HT SOP", "NeuroBench"]
    # A convention missing from a run (e.g. SNN formulas for a model without spiking neurons) plots as 0.
    get = lambda key, field: float(energy.get(key, {}).get(field) or 0.0)  # noqa: E731
    vals = [get("diet", "e_ann_uj"), get("diet", "e_snn_uj"), get("multispike", "e_uj"), get("lmht_sop", "e_uj"),
            get("neurobench", "e_uj")]
    if "sdt" in energy:
        labels.append("SDT")
        vals.append(get("sdt", "e_uj"))
    return labels, vals


def plot_energy_comparison(runs: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                           title: str = "Energy per sample by run") -> str:
    """Grouped bars: for every run, the totals under each convention (µJ)."""
    fig = _figure(max(7.0, 1.6 * len(runs) + 3), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    names = list(runs)
    labels = _energy_totals(next(iter(runs.values())))[0] if runs else []
    width = 0.8 / max(len(labels), 1)
    for j, label in enumerate(labels):
        vals = []
        for n in names:
            lab, v = _energy_totals(runs[n])
            vals.append(dict(zip(lab, v)).get(label, 0.0))
        ax.bar([i + (j - (len(labels) - 1) / 2) * width for i in range(len(names))], vals, width, label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(_short(names, 24), rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("µJ per sample")
    positive = [v for n in names for v in _energy_totals(runs[n])[1] if v > 0]
    if positive and max(positive) / min(positive) > 50:  # a log axis only when the bars span decades
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)
