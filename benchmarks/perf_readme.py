#!/usr/bin/env python
"""Render the README's performance tables from the JSON of ``benchmarks/perf_goals.py`` (Markdown on stdout).

    python benchmarks/perf_readme.py benchmarks/results/perf_goals_cpu.json > /tmp/perf.md
    python benchmarks/perf_readme.py benchmarks/results/perf_goals_cpu.json --part tables   # README: no goal table
    python benchmarks/perf_readme.py benchmarks/results/perf_goals_cpu.json --part goals    # the goal table alone
    python benchmarks/perf_readme.py benchmarks/results/perf_goals_cpu.json --part tables --update README.md
    python benchmarks/perf_readme.py benchmarks/results/perf_goals_cpu.json --part all --update docs/performance.md

``--update FILE`` replaces the text between ``<!-- perf_readme:PART begin -->`` and ``<!-- perf_readme:PART end -->``
in FILE (tests/test_perf_scripts.py checks that the committed README and docs page match the committed JSON).

Every number comes from the JSON; nothing is typed in by hand.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"if": "IF", "lif": "LIF", "mht": "M-HT L=4", "lmht": "LM-HT L=4 (T-GIM)", "mlif": "M-LIF S=4"}


def _f(v: float | None, nd: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


PARTS = ("all", "tables", "goals")


def render(res: dict, source: str = "benchmarks/results/perf_goals_cpu.json", part: str = "all") -> str:
    """Markdown of ``res``: provenance and the neuron/network/memory tables (``tables``), the goal table with its
    met count (``goals``), or both (``all``)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if part == "goals":
        return "\n".join(_goal_lines(res) + [f"Source: `{source}`."])
    s = res["settings"]
    hw = res["hardware"]
    out = []
    out.append(f"`{res['command']}` at commit `{res['commit'][:12]}` ({res['date_utc']} UTC), {hw.get('cpu', '?')}, "
               f"{hw['cpus']} cores, {s['threads']} torch thread(s), torch {res['versions']['torch']}, SpikingJelly "
               f"{res['versions'].get('spikingjelly') or 'not installed'}. Load average {res['loadavg_before'][0]:.1f}"
               f" before / {res['loadavg_after'][0]:.1f} after"
               + (" - **shared machine** (" + res["machine_note"].rstrip(".") + ")" if res.get("machine_shared") else "")
               + ".")
    for r in res.get("reruns", []):
        out.append("")
        out.append(f"Rerun of {', '.join(r['sections'])}: `{r['command']}` at commit `{r['commit'][:12]}` "
                   f"({r['date_utc']} UTC), load average {r['loadavg_before'][0]:.1f} before / "
                   f"{r['loadavg_after'][0]:.1f} after" + (f" - {r['note']}" if r.get("note") else "") + ".")
    out.append("")
    if res.get("neurons"):
        B, C, H, W = s["neuron_shape_BCHW"].split(",")
        out.append(f"Neuron modules with the fused C++ kernel, `[T,{B},{C},{H},{W}]` float32: median time / the copy "
                   f"floor (forward) and / copy+add (forward+backward), measured in the same run:")
        out.append("")
        head = "| T | floor fwd / fwd+bwd (ms) | " + " | ".join(NAMES.values()) + " | SpikingJelly `IFNode` | IF vs SJ fwd+bwd |"
        out.append(head)
        out.append("|" + "---|" * (head.count("|") - 1))
        for n in res["neurons"]:
            T, t, r = n["shape"][0], n["times"], n["ratios"]
            cells = [f"{r[f'{k}_fwd_x_floor']:.2f} / {r[f'{k}_fwd_bwd_x_floor']:.2f}" for k in NAMES]
            sj = (f"{r['if_spikingjelly_fwd_x_floor']:.1f} / {r['if_spikingjelly_fwd_bwd_x_floor']:.1f}"
                  if "if_spikingjelly_fwd_x_floor" in r else "n/a")
            speed = _f(r.get("if_speedup_vs_spikingjelly_fwd_bwd"), 1) + "x"
            out.append(f"| {T} | {t['floor_fwd']['median_ms']:.2f} / {t['floor_fwd_bwd']['median_ms']:.2f} | "
                       + " | ".join(cells) + f" | {sj} | {speed} |")
        out.append("")
    nets = [n for n in res.get("network", []) if "error" not in n]
    if nets:
        out.append(f"Whole networks at T = {s['net_T']}, batch {s['batch']} (IF, soft reset, sigmoid surrogate; ANN = "
                   f"ReLU at T = 1): time per timestep relative to the ANN, medians of interleaved rounds:")
        out.append("")
        out.append("| network | train / ANN | infer / ANN | `snn_bytes` train / ANN | SpikingJelly train / ANN | "
                   "`snn_bytes` / `snn` train time | conv / BN / activation share of the SNN step (ANN) |")
        out.append("|---|---|---|---|---|---|---|")
        for n in nets:
            r = n["ratios"]
            prof = n.get("profile", {}).get("snn", {}).get("share_by_group")
            aprof = n.get("profile", {}).get("ann", {}).get("share_by_group")
            shares = (f"{prof['conv']:.0%} / {prof['batch_norm']:.0%} / {prof['activation']:.0%}" if prof else "n/a")
            if aprof:
                shares += f" ({aprof['conv']:.0%} / {aprof['batch_norm']:.0%} / {aprof['activation']:.0%})"
            out.append(f"| `{n['model']}` | {_f(r.get('snn_train_per_timestep_vs_ann'))} | "
                       f"{_f(r.get('snn_infer_per_timestep_vs_ann'))} | "
                       f"{_f(r.get('snn_bytes_train_per_timestep_vs_ann'))} | "
                       f"{_f(r.get('snn_spikingjelly_train_per_timestep_vs_ann'))} | "
                       f"{_f(r.get('snn_bytes_vs_snn_train'), 3)} | {shares} |")
        out.append("")
    mem = [m for m in res.get("memory", []) if "error" not in m]
    if mem:
        variants = []
        for m in mem:
            if m["variant"] not in variants:
                variants.append(m["variant"])
        out.append("Peak training memory (MiB over the resident size before training; fresh process each, "
                   "`MALLOC_MMAP_THRESHOLD_` fixed):")
        out.append("")
        out.append("| network | " + " | ".join(f"`{v}`" for v in variants) + " |")
        out.append("|---|" + "---|" * len(variants))
        by = {(m["model"], m["variant"]): m for m in mem}
        for model in dict.fromkeys(m["model"] for m in mem):
            out.append(f"| `{model}` | " + " | ".join(
                f"{by[(model, v)]['peak_training_memory_MiB']:.0f}" if (model, v) in by else "n/a" for v in variants)
                + " |")
        out.append("")
    if part == "all":
        out += _goal_lines(res)
    out.append(f"Source: `{source}`.")
    return "\n".join(out)


def _goal_lines(res: dict) -> list[str]:
    out: list[str] = []
    rows = res.get("goal_rows", [])
    if rows:
        met = sum(1 for r in rows if r["met"])
        out.append(f"Goals of issue 19 ({met} of {len(rows)} rows met):")
        out.append("")
        out.append("| metric | measured | goal | met |")
        out.append("|---|---|---|---|")
        for r in rows:
            note = f" ({r['note']})" if r.get("note") else ""
            out.append(f"| {r['metric']}{note} | {_f(r['measured'])} | {r['goal']} | "
                       f"{'yes' if r['met'] else '**no**'} |")
        out.append("")
    return out


def markers(part: str) -> tuple[str, str]:
    """The comment lines that enclose a generated ``part`` in a Markdown file."""
    return f"<!-- perf_readme:{part} begin -->", f"<!-- perf_readme:{part} end -->"


def replace_block(text: str, part: str, body: str, marker_pair: tuple[str, str] | None = None) -> str:
    """``text`` with the block between ``part``'s markers (or ``marker_pair``) replaced by ``body``; ValueError
    without the markers."""
    begin, end = marker_pair or markers(part)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"no '{begin}' ... '{end}' block to replace")
    return text[:i + len(begin)] + "\n" + body + "\n" + text[j:]


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="Render the README's performance tables from perf_goals.py JSON")
    ap.add_argument("json", help="a results file of benchmarks/perf_goals.py")
    ap.add_argument("--part", choices=PARTS, default="all",
                    help="tables: provenance and tables; goals: the goal table; all: both (default)")
    ap.add_argument("--update", metavar="FILE", default=None,
                    help="replace the part's marked block in FILE instead of printing it")
    ap.add_argument("--marker", default=None,
                    help="with --update: the block's name in its markers (default: perf_readme:PART)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    path = Path(args.json)
    md = render(json.loads(path.read_text()), str(path), args.part)
    if args.update:
        target = Path(args.update)
        pair = None if args.marker is None else (f"<!-- {args.marker} begin -->", f"<!-- {args.marker} end -->")
        try:
            target.write_text(replace_block(target.read_text(), args.part, md, marker_pair=pair))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"perf_readme: {target}: {exc}; add the markers where the block belongs") from None
        print(f"updated the {args.part} block of {target}")
    else:
        print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
