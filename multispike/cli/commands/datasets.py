"""``multispike datasets``: list every known dataset and where it was (or was not) found."""
from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "datasets", help="list the known datasets and where each was or was not found",
        description="List every dataset in the catalog with found / not found, the path looked at and, when "
                    "missing, how to fix it. Nothing is read beyond checking that the expected files exist, "
                    "and nothing is downloaded.")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="data root to search (default: $MULTISPIKE_DATA, else <repo>/../shared/datasets)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=run)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from ...data.catalog import data_root_source, dataset_status, resolve_data_root

    out = out or sys.stdout
    status = dataset_status(args.data_dir)
    root, source = resolve_data_root(args.data_dir), data_root_source(args.data_dir)
    if args.json:
        json.dump({"data_root": str(root), "data_root_source": source,
                   "datasets": [s.to_dict() for s in status]}, out, indent=2)
        print(file=out)
        return 0
    print(f"data root: {root} (from {'--data-dir' if source == 'argument' else source})", file=out)
    rows = [["name", "kind", "status", "classes", "shape", "path"]]
    for s in status:
        state = "found" if s.found else "not found"
        if s.found and not s.reader:
            state = "found, no reader"
        rows.append([s.name, s.kind, state, str(s.num_classes) if s.num_classes else "-",
                     "x".join(map(str, s.input_shape)) if s.input_shape else "-", s.path])
    _table(rows, out)
    missing = [s for s in status if s.fix]
    if missing:
        print(file=out)
        for s in missing:
            print(f"{s.name}: {s.fix}", file=out)
    print(f"\n{sum(s.found for s in status)} of {len(status)} found. Set MULTISPIKE_DATA or pass --data-dir to "
          "search another folder.", file=out)
    return 0
