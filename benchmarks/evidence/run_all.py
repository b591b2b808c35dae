"""Run the evidence tables (LM-HT, QAC, M-LIF) in one process, sharing the trained ANNs, within one time budget.

Each table writes ``evidence_<table>.json`` and ``.md`` into ``--out``; a table that fails is recorded (status
``failed`` with the traceback) and the next one still runs. ``evidence_summary.json`` / ``.md`` collect every
table's status, claims and verdicts, and ``evidence_readme_section.md`` is the same text with the headings one
level down, ready to paste as the README's Results section.

The budget: the profile's ``total_seconds`` (or ``--max-seconds``) is shared by the selected tables; when a
table starts it gets ``(time left) * share / (sum of the shares of the tables not yet run)``, so time one table
leaves unused goes to the next.

Examples (from the repository root)::

    PYTHONPATH=. python3 benchmarks/evidence/run_all.py --profile quick --out /tmp/evidence
    PYTHONPATH=. python3 benchmarks/evidence/run_all.py --profile gpu --data .evidence_data --out $OUT
    PYTHONPATH=. python3 benchmarks/evidence/run_all.py --profile gpu --dry-run --out /tmp/dry   # CPU check
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.evidence import common as C  # noqa: E402
from benchmarks.evidence import lmht_table, mlif_table, qac_table  # noqa: E402

MODULES = {"lmht": lmht_table, "qac": qac_table, "mlif": mlif_table}


def parse_tables(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in MODULES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"--tables takes a comma-separated subset of {','.join(MODULES)}, "
                                         f"got {text!r}")
    return [t for t in MODULES if t in names]  # canonical order: the ANNs are trained by the first user


def _stub(name: str, title: str, status: str, error: str, tb: str = "") -> dict:
    """The record of a table that produced no result file of its own."""
    return {"table": name, "title": title, "status": status, "trainer": C.TRAINER, "wall_time_s": 0.0, "claims": [], "rows": [],
            "scale": {}, "errors": [{"part": "run_all", "error": error, "traceback": tb}]}


def summarize(results: list[dict], ctx: C.Context, started: float) -> dict:
    return {
        "schema_version": C.SCHEMA_VERSION, "trainer": C.TRAINER, "command": ctx.command,
        "profile": ctx.profile.name, "environment": ctx.env, "wall_time_s": round(time.perf_counter() - started, 2),
        "tables": [{"table": r["table"], "title": r["title"], "status": r["status"], "wall_time_s": r["wall_time_s"],
                    "claims": [{"id": c["id"], "claim": c["claim"], "verdict": c["verdict"], "reason": c["reason"]}
                               for c in r["claims"]],
                    "errors": [e["error"] for e in r["errors"]]} for r in results],
    }


def summary_markdown(summary: dict, results: list[dict], *, heading: str = "#") -> str:
    """All tables in one document, written so that it can be pasted as the README's Results section: the scale,
    each table (measured beside the paper's numbers), each claim's verdict and a list of every disagreement."""
    env = summary["environment"]
    hw = (f"one {env['gpu']['name']}" if env.get("gpu") else f"CPU ({env['cpu']}, {env['torch_threads']} threads)")
    h2 = heading + "#"
    lines = [f"{heading} Results: the papers' central claims at small scale", "",
             f"Measured by `{summary['command']}` at commit `{env['commit']}` on {hw} (torch {env['torch']}, "
             f"profile `{summary['profile']}`, {summary['wall_time_s']:.0f} s in all). Every number below is measured; "
             "the *paper reports* column is copied from the specification (algorithms.md §8) for orientation and "
             "refers to the papers' own datasets, networks and schedules. Per-table JSON and Markdown with the "
             "seeds, subsets, epochs, per-phase timings and time-budget cuts: `benchmarks/results/evidence_*.json`.",
             "", "**Scale.** These are small-scale checks, not reproductions of the headline numbers: a stratified "
             "CIFAR-10 subset whose pixels were decoded from JPEG copies (not the official files), one small backbone "
             "shared by all tables, and tens of epochs instead of hundreds (see each table's scale line). Verdicts "
             "follow explicit rules stated beside each claim, with a noise margin of two binomial standard errors.",
             ""]
    disagreements = []
    for r in results:
        lines += [f"{h2} {r['title']} ({r['status']})", ""]
        for k, v in r.get("scale", {}).items():
            lines.append(f"- {k}: {v}")
        lines += ["", "| method | setting | measured top-1 % | paper reports (separate; §8) |", "|---|---|---|---|"]
        for row in r["rows"]:
            acc = "—" if row["accuracy"] is None else f"{row['accuracy']:.2f}"
            lines.append(f"| {row['method']} | {row['setting']} | {acc} | {row.get('paper_reports') or '—'} |")
        lines += ["", "| claim | rule | verdict | reason |", "|---|---|---|---|"]
        for c in r["claims"]:
            lines.append(f"| {c['claim']} | {c.get('rule', '')} | **{c['verdict']}** | {c['reason']} |")
            if c["verdict"] != "reproduced":
                disagreements.append(f"- {r['table']}: *{c['claim']}* — {c['verdict']}: {c['reason']}.")
        if r["errors"]:
            lines += ["", "Errors: " + "; ".join(f"`{e['error']}`" for e in r["errors"])]
        lines += ["", f"Regenerate: `{r.get('command', summary['command'])}`", ""]
    lines += [f"{h2} Where our measurements do not (fully) confirm the papers", ""]
    lines += disagreements or ["- every stated claim was reproduced at this scale."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the evidence tables (LM-HT, QAC, M-LIF) with shared ANNs.")
    C.add_common_args(ap)
    ap.add_argument("--tables", type=parse_tables, default=list(MODULES),
                    help="comma-separated subset of lmht,qac,mlif (default: all three)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    C.install_signal_handlers()
    ctx = C.make_context(args, None if argv is None else [sys.argv[0], *argv])
    p = ctx.profile
    deadline = started + p.total_seconds
    ctx.log(f"profile {p.name}: tables {args.tables}, budget {p.total_seconds:.0f} s, device {ctx.device}"
            + (f" ({ctx.env['gpu']['name']})" if ctx.env.get("gpu") else ""))
    results = []
    pending = list(args.tables)
    interrupted = None
    while pending:
        name = pending.pop(0)
        mod = MODULES[name]
        shares = p.table_shares
        left = max(1.0, deadline - time.perf_counter())
        seconds = left * shares[name] / (shares[name] + sum(shares[t] for t in pending))
        try:
            res = C.run_table(ctx, mod, seconds)
        except C.Interrupted as exc:  # arrived between a table's parts that record it themselves
            interrupted = str(exc)
            res = _stub(name, mod.TITLE, "interrupted", f"interrupted: {exc}")
        except Exception as exc:  # noqa: BLE001 - even writing failed: record and go on
            res = _stub(name, mod.TITLE, "failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()[-4000:])
            (ctx.out_dir / f"evidence_{name}.json").write_text(json.dumps(res, indent=1) + "\n")
        results.append(res)
        if res["status"] == "interrupted" or interrupted:
            for skipped in pending:
                results.append(_stub(skipped, MODULES[skipped].TITLE, "skipped", "not run: the run was interrupted"))
            pending = []
    summary = summarize(results, ctx, started)
    (ctx.out_dir / "evidence_summary.json").write_text(json.dumps(C._jsonable(summary), indent=1) + "\n")
    (ctx.out_dir / "evidence_summary.md").write_text(summary_markdown(summary, results))
    (ctx.out_dir / "evidence_readme_section.md").write_text(summary_markdown(summary, results, heading="##"))
    ctx.log(f"done in {summary['wall_time_s']:.1f} s: " + ", ".join(f"{r['table']}={r['status']}" for r in results))
    if any(r["status"] in ("interrupted", "skipped") for r in results):
        return 2
    return 0 if all(r["status"] != "failed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
