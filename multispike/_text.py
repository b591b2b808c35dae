"""Plain-text report pieces shared by the library's reports and the command line (no torch, no multispike imports).

Training on events (:mod:`multispike.train.events`), the evaluation report (:mod:`multispike.metrics.report`) and
the CLI workflows print the same kind of tables and accuracies; writing them once keeps every report aligned the
same way.
"""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["format_table", "percent", "percent_curve"]


def format_table(rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text table; the first row is the header, underlined with dashes.

    Example::

        >>> print(format_table([("S", "acc"), (1, "97.10"), (3, "98.25")]))
        S  acc
        -  -----
        1  97.10
        3  98.25
    """
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def percent(v: float | None) -> str:
    """A fraction as a percentage with two decimals (``0.9712`` -> ``"97.12"``); ``None`` -> ``"-"``."""
    return "-" if v is None else f"{100 * v:.2f}"


def percent_curve(accs: Sequence[float]) -> str:
    """Accuracies after t = 1, 2, ... steps as space-separated percentages."""
    return " ".join(f"{100 * a:.2f}" for a in accs)
