"""Verdict rules of the evidence tables: binomial noise margins and the "greater" / "close" judgements."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.evidence.table_run import TableRun


def noise_note(n: int, what: str = "test image") -> str:
    """The "Noise" line of a table's scale: what one test image is worth and the standard error at 80 %."""
    return f"one {what} = {100 / n:.3f} pp; binomial standard error at 80% = {stderr_pp(80.0, n):.2f} pp"


def subset_note(data, seed: int) -> str:
    """How large the stratified CIFAR-10 subset ``data`` is (the "Scale" line's middle part)."""
    return (f"a stratified CIFAR-10 subset of {len(data.train_y)} train / {len(data.test_y)} test images "
            f"(seed {seed})")


def stderr_pp(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy (%), in percentage points."""
    p = min(max(acc / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1 - p), 1e-12) / max(1, n))


def noise_margin(a: float, b: float, n: int, z: float = 2.0) -> float:
    """``z`` standard errors of the difference of two accuracies measured on ``n`` test images each (treated
    as independent, which is conservative for paired measurements on the same images)."""
    return z * math.sqrt(stderr_pp(a, n) ** 2 + stderr_pp(b, n) ** 2)


def judge_greater(a: float, b: float, n: int, what: str, *, min_gap: float = 0.0) -> tuple[str, str]:
    """Claim "a > b (by at least ``min_gap``)": reproduced when ``a - b`` exceeds ``max(min_gap, noise)``,
    partly when ``a >= b`` but within that margin, not reproduced when ``a < b``."""
    gap, margin = a - b, max(min_gap, noise_margin(a, b, n))
    if gap > margin:
        return "reproduced", f"{what}: difference {gap:+.2f} pp exceeds the margin {margin:.2f} pp"
    if gap >= 0:
        return "partly reproduced", (f"{what}: difference {gap:+.2f} pp is positive but within the margin "
                                     f"{margin:.2f} pp")
    return "not reproduced", f"{what}: difference {gap:+.2f} pp (the claimed order is reversed)"


def judge_close(a: float, b: float, n: int, tol: float, what: str) -> tuple[str, str]:
    """Claim "a is within ``tol`` of b (not worse)": reproduced if ``a >= b - tol``, partly if ``a >= b - 2·tol``
    or within the noise margin of ``b - tol``."""
    gap, margin = a - b, noise_margin(a, b, n)
    if gap >= -tol:
        return "reproduced", f"{what}: {gap:+.2f} pp, not below the tolerance of −{tol:g} pp"
    if gap >= -2 * tol or gap + margin >= -tol:
        return "partly reproduced", (f"{what}: {gap:+.2f} pp, outside -{tol:g} pp but within -{2 * tol:g} pp or "
                                     f"the noise")
    return "not reproduced", f"{what}: {gap:+.2f} pp, worse than -{2 * tol:g} pp"


def equal_epochs_check(table: "TableRun", keys: tuple[str, ...], verdict: str, why: str) -> tuple[str, str]:
    """A comparison that assumes equal training epochs is downgraded to 'partly reproduced' when the time guard
    left the compared rows with different epoch counts (more than 2% apart); the reason says so."""
    eps = [table.find(k).get("epochs_run") for k in keys if table.find(k) is not None]
    eps = [e for e in eps if e is not None]
    if len(eps) == len(keys) and eps and max(eps) > 1.02 * min(eps):
        why += f"; epochs unequal {dict(zip(keys, eps))} (time guard)"
        if verdict == "reproduced":
            verdict = "partly reproduced"
    return verdict, why
