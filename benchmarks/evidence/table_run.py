"""One table's run: the time planner that shares its budget among phases, the rows/claims/phases it collects,
its writer (JSON and Markdown), and the command-line entry point of a single-table script."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from benchmarks.evidence import profiles
from benchmarks.evidence.profiles import SCHEMA_VERSION, SPEC_SECTION, VERDICTS, get_profile
from benchmarks.evidence.datasets import default_data_dir
from benchmarks.evidence.provenance import TRAINER
from benchmarks.evidence.report import _jsonable, render_markdown
from benchmarks.evidence.run_context import Context, Interrupted, install_signal_handlers


class Planner:
    """Shares a table's time among its phases by weight (see the module docstring)."""

    def __init__(self, deadline: float, weights: dict[str, float], reserve_fraction: float = 0.08) -> None:
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"phase weights must be >= 0, got {weights}")
        self.deadline = deadline
        self.weights = dict(weights)
        self.start = time.perf_counter()
        self.reserve = max(0.0, reserve_fraction) * max(0.0, deadline - self.start)
        self.done: set[str] = set()
        self.log: list[dict] = []

    def pending_weight(self) -> float:
        return sum(w for n, w in self.weights.items() if n not in self.done)

    def allot(self, name: str) -> float:
        """Seconds for phase ``name`` (marks it as started). Unknown names get an equal share of the rest."""
        w = self.weights.get(name)
        if w is None:
            w = self.pending_weight() / max(1, len([n for n in self.weights if n not in self.done])) or 1.0
            self.weights[name] = w
        pending = self.pending_weight()
        now = time.perf_counter()
        left = max(0.0, self.deadline - now)
        avail = max(0.0, left - self.reserve * (left / max(1e-9, self.deadline - self.start)))
        self.done.add(name)
        seconds = avail * w / pending if pending > 0 else avail
        self.log.append({"phase": name, "weight": w, "allotted_s": round(seconds, 2), "left_s": round(left, 2)})
        return seconds

    def skip(self, name: str) -> None:
        """Release the weight of a phase that does not need to run (e.g. a reused model)."""
        self.done.add(name)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()


class TableRun:
    """Rows, claims, phase records and errors of one table, and its writer."""

    def __init__(self, name: str, title: str, ctx: Context, seconds: float, weights: dict[str, float]) -> None:
        self.name = name
        self.title = title
        self.ctx = ctx
        self.seconds = seconds
        self.t0 = time.perf_counter()
        self.planner = Planner(self.t0 + seconds, weights)
        self.rows: list[dict] = []
        self.claims: list[dict] = []
        self.phases: list[dict] = []
        self.errors: list[dict] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self.scale: dict[str, Any] = {}
        self.interrupted = False

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Record an exception in ``errors`` and carry on with the next part of the table."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a failing row must not stop the table
            tb = traceback.format_exc()
            self.errors.append({"part": what, "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]})
            self.ctx.log(f"  ERROR in {what}: {type(exc).__name__}: {exc}")

    def add_row(self, group: str, method: str, setting: str, measured: float | None, *, paper: str | None = None,
                n: int | None = None, **extra: Any) -> dict:
        row = {"group": group, "method": method, "setting": setting,
               "accuracy": None if measured is None else round(float(measured), 4), "n_test": n,
               "paper_reports": paper, **extra}
        self.rows.append(row)
        acc = "n/a" if measured is None else f"{measured:.2f}%"
        self.ctx.log(f"  {group} | {method} | {setting}: {acc}")
        self.write(final=False)  # a killed run still leaves every finished row on disk
        return row

    def add_claim(self, cid: str, claim: str, rule: str, verdict: str, reason: str, *, paper: str | None = None,
                  measured: dict | None = None) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.claims.append({"id": cid, "claim": claim, "rule": rule, "paper_reports": paper,
                            "measured": measured or {}, "verdict": verdict, "reason": reason})

    def find(self, key: str) -> dict | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def acc(self, key: str) -> float | None:
        r = self.find(key)
        return None if r is None else r.get("accuracy")

    # -- output -----------------------------------------------------------------------------------------
    def result(self, final: bool = True) -> dict:
        ctx = self.ctx
        status = "ok" if not self.errors else ("partial" if self.rows else "failed")
        if self.interrupted:
            status = "interrupted"
        elif not final:
            status = "running"
        return {
            "schema_version": SCHEMA_VERSION, "table": self.name, "title": self.title, "status": status,
            "trainer": TRAINER,
            "command": ctx.command, "profile": ctx.profile.to_dict(), "environment": ctx.env,
            "scale": self.scale, "budget": {"table_seconds": round(self.seconds, 1),
                                            "allotments": self.planner.log},
            "rows": self.rows, "claims": self.claims, "phases": self.phases, "notes": self.notes,
            "errors": self.errors, "extra": self.extra, "paper_source": SPEC_SECTION,
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
        }

    def write(self, final: bool = True) -> dict:
        """Write ``evidence_<name>.json`` and ``.md`` (atomically); ``final=False`` marks the table as running."""
        res = self.result(final)
        out = self.ctx.out_dir
        for path, text in ((out / f"evidence_{self.name}.json", json.dumps(_jsonable(res), indent=1) + "\n"),
                           (out / f"evidence_{self.name}.md", render_markdown(res))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        if final:
            self.ctx.log(f"wrote {out / f'evidence_{self.name}.json'} and .md ({res['status']}, "
                         f"{res['wall_time_s']:.1f} s)")
        return res


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", choices=list(profiles.PROFILES), default="quick",
                    help="scale of the run: quick (CI smoke test, < 1 min on CPU), cpu_small (ResNet-8 on 5k "
                         "CIFAR-10, about 10 min per table on one CPU thread), cpu (ResNet-20 on the same subset, at most "
                         "55 min per table on 2 cores; measured 1.4-8 min), gpu (all tables in about 7 minutes on one GPU)")
    ap.add_argument("--data", type=Path, default=None,
                    help="a bundle from make_bundle.py, or the shared datasets folder (default: $MULTISPIKE_DATA, "
                         "<repo>/.evidence_data if it holds a bundle, else <repo>/../shared/datasets)")
    ap.add_argument("--out", type=Path, required=True, help="folder for evidence_<table>.json and .md")
    ap.add_argument("--dry-run", action="store_true",
                    help="shrink the profile (tiny data, 1 epoch of 2 batches) to run every code path quickly")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="override the profile's time budget (seconds for the whole command)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when the profile prefers it and "
                    "one is available, else cpu)")
    ap.add_argument("--commit", default=None, help="commit to record when the copy has no .git")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep the shared ANNs here (outside the repository) so separate table commands reuse them")
    ap.add_argument("--hard-seconds", type=float, default=None,
                    help="hard limit from the start (default: 1.05 x the budget + 10 s); past it every phase stops "
                         "after one step; set it below any external time limit")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")


def make_context(args: argparse.Namespace, argv: list[str] | None = None) -> Context:
    prof = get_profile(args.profile, dry_run=args.dry_run, max_seconds=args.max_seconds)
    data = args.data if args.data is not None else default_data_dir()
    return Context(prof, data, args.out, device=args.device, commit=args.commit, cache_dir=args.cache_dir,
                   quiet=args.quiet, hard_seconds=args.hard_seconds, argv=argv)


def table_main(module: Any, argv: list[str] | None = None) -> int:
    """Entry point of a single-table script (``module`` has ``NAME``, ``TITLE``, ``weights``, ``run``, ``judge``)."""
    ap = argparse.ArgumentParser(description=module.TITLE)
    add_common_args(ap)
    args = ap.parse_args(argv)
    install_signal_handlers()
    ctx = make_context(args, None if argv is None else [sys.argv[0], *argv])
    seconds = ctx.profile.table_seconds[module.NAME] if args.max_seconds is None else args.max_seconds
    res = run_table(ctx, module, seconds)
    return {"failed": 1, "interrupted": 2}.get(res["status"], 0)


def run_table(ctx: Context, module: Any, seconds: float) -> dict:
    """Run one table with its budget, then its verdict rules; an exception is recorded and the (partial) result
    is still written. :class:`Interrupted` is recorded too and then re-raised (after writing) in ``result``'s
    status ``interrupted``; the caller decides whether to go on."""
    name = module.NAME
    ctx.log(f"== table {name}: budget {seconds:.0f} s, device {ctx.device}, profile {ctx.profile.name}")
    table = TableRun(name, module.TITLE, ctx, seconds, module.weights(ctx.profile))
    for part, step in ((f"table {name}", module.run), (f"verdicts of table {name}", module.judge)):
        try:
            with table.guard(part):
                step(table)
        except Interrupted as exc:
            table.interrupted = True
            table.errors.append({"part": part, "error": f"interrupted: {exc}", "traceback": ""})
            ctx.log(f"  INTERRUPTED in {part}: {exc}")
    return table.write()
