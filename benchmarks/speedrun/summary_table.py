#!/usr/bin/env python
"""Render the README's CPU-speedrun summary from ``benchmarks/results/speedrun_cpu.json`` (Markdown on stdout).

    python benchmarks/speedrun/summary_table.py benchmarks/results/speedrun_cpu.json
    python benchmarks/speedrun/summary_table.py benchmarks/results/speedrun_cpu.json --update README.md

``--update FILE`` replaces the text between ``<!-- speedrun_summary begin -->`` and ``<!-- speedrun_summary end -->``
(tests/test_perf_scripts.py checks that the committed README matches the committed JSON). Every number comes from
the JSON: the networks' accuracy (with and without test-time augmentation), timesteps, spike rates and energy as
``multispike eval`` measured them, and issue 15's targets next to the measured values.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARKERS = ("<!-- speedrun_summary begin -->", "<!-- speedrun_summary end -->")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"


def _t1(ev: dict) -> str:
    """Accuracy after the first timestep, from an eval's accuracy-vs-T curve."""
    curve = dict(ev.get("accuracy_vs_T", []))
    return f" (t=1 {100 * curve[1]:.2f} %)" if 1 in curve and len(curve) > 1 else ""


def render(res: dict, source: str) -> str:
    snn, qac = res["snn_eval"], res["qac_snn_eval"]
    qac_T = res.get("qac_avg_T_detail", {})
    # network order (the JSON's keys are sorted as strings: features.10 before features.3)
    natural = lambda name: [int(p) if p.isdigit() else p for p in name.split(".")]  # noqa: E731
    layer_T = ",".join(str(qac["layer_timesteps"][k]) for k in sorted(qac["layer_timesteps"], key=natural))
    out = [f"Measured once on {res.get('cpu', '?')} (commit `{res['commit'][:12]}`, {res['date']}; the JSON records "
           f"each step's commit, seconds and the load average), all 50,000 training and 10,000 test images; TTA = "
           f"`multispike eval --tta-flip --tta-translate`; energy per image and δ (DIET's 45 nm model) from "
           f"`multispike eval`:", "",
           "| network | top-1 | top-1 with TTA | T | spike rate | δ | energy / image |",
           "|---|---|---|---|---|---|---|",
           f"| float ANN | **{_pct(res['ann_top1'])}** | - | - | - | - | {snn['energy_uj_ann']:.1f} µJ (ANN) |",
           f"| QCFS ANN, {res['snn_L'] * res['snn_T']} levels | **{_pct(res['quantized_top1'])}** | - | - | - | - | - |",
           f"| -> LM-HT SNN, L = {res['snn_L']}, T = {res['snn_T']} | **{_pct(res['snn_top1'])}**{_t1(snn)} | "
           f"{_pct(res.get('snn_top1_tta'))} | {res['snn_T']} | {snn['spike_rate']:.3f} | "
           f"{snn['energy_delta_diet']:.2f} | {snn['energy_uj_multispike']:.1f} µJ |",
           f"| QAC ANN | **{_pct(res['qac_quantized_top1'])}** | - | - | - | - | - |",
           f"| -> mixed-timestep IF SNN, aver+aver | **{_pct(res['qac_snn_top1'])}**{_t1(qac)} | "
           f"{_pct(res.get('qac_snn_top1_tta'))} | T_l {layer_T}: avg {res['qac_avg_T']:.2f}"
           + (f" (op-weighted {qac_T['op_weighted']:.2f})" if "op_weighted" in qac_T else "")
           + f" | {qac['spike_rate']:.3f} | {qac['energy_delta_diet']:.2f} | {qac['energy_uj_multispike']:.1f} µJ |",
           "", "Issue 15's targets:", "",
           "| target | goal | measured | met |", "|---|---|---|---|"]
    gap = abs(res["snn_top1"] - res["quantized_top1"]) * 100
    rows = [("float ANN", "≥ 93.5 %", _pct(res["ann_top1"]), res["ann_top1"] >= 0.935),
            ("quantized (QCFS) ANN", "≥ 92.5 %", _pct(res["quantized_top1"]), res["quantized_top1"] >= 0.925),
            ("LM-HT SNN", "≥ 92 %", _pct(res["snn_top1"]), res["snn_top1"] >= 0.92),
            ("LM-HT SNN vs its quantized ANN", "within 0.5 pp", f"{gap:.2f} pp", gap <= 0.5),
            ("QAC mixed-timestep SNN", "≥ 92 %", _pct(res["qac_snn_top1"]), res["qac_snn_top1"] >= 0.92),
            ("its average T", "≤ 2.5", f"{res['qac_avg_T']:.2f}", res["qac_avg_T"] <= 2.5),
            ("SNN pipeline: quantized training + conversion + SNN evaluation", "≤ 2 h (7,200 s)",
             f"{res['wall_seconds']:,.0f} s", res["wall_seconds"] <= 7200)]
    out += [f"| {name} | {goal} | {measured} | {'yes' if met else '**no**'} |" for name, goal, measured, met in rows]
    out += ["", f"Source: `{source}`."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render the README's CPU-speedrun summary from speedrun_cpu.json")
    ap.add_argument("json", help="benchmarks/results/speedrun_cpu.json (issue 15's summary keys)")
    ap.add_argument("--update", metavar="FILE", default=None, help="replace the marked block in FILE")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    md = render(json.loads(Path(args.json).read_text()), args.json)
    if not args.update:
        print(md)
        return 0
    text = Path(args.update).read_text()
    i, j = text.find(MARKERS[0]), text.find(MARKERS[1])
    if i < 0 or j < i:
        raise SystemExit(f"{args.update}: no '{MARKERS[0]}' ... '{MARKERS[1]}' block to replace")
    Path(args.update).write_text(text[:i + len(MARKERS[0])] + "\n" + md + "\n" + text[j:])
    print(f"updated {args.update}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
