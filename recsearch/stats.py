"""Summaries of repeated measurements: the same configuration trained on several seeds (a
sweep's re-evaluation) or evaluated on several folds (``recsearch cv``).

The 95% confidence interval of a mean of ``n`` values is Student's t interval,
``mean ± t(0.975, n - 1) · s / √n`` with ``s`` the sample standard deviation (``n - 1`` in its
denominator): with 3 seeds ``t`` is 4.30, so an interval is about 2.5 standard deviations wide
on each side. One value has no spread: its ``std`` and ``ci95`` are None.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def estimate(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """``{"mean", "std", "ci95", "n", "values"}`` of finite ``values`` (``ci95``: the half-width
    of the ``confidence`` interval)."""
    from scipy.stats import t

    values = [float(v) for v in values]
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"need at least one value, all finite; got {values}")
    n = len(values)
    mean = sum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None, "n": 1, "values": values}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": half, "n": n, "values": values}


def summarize(runs: Iterable[Mapping[str, float]]) -> dict[str, dict[str, Any]]:
    """Per metric, the ``estimate`` over the runs that report it (``{"ndcg@10": {...}}``)."""
    by_metric: dict[str, list[float]] = {}
    for run in runs:
        for name, value in run.items():
            by_metric.setdefault(name, []).append(value)
    return {name: estimate(values) for name, values in by_metric.items()}


def plus_minus(summary: Mapping[str, Any] | None, spread: str = "ci95") -> str:
    """``0.2481 ± 0.0052`` (``spread``: "ci95" or "std"); the mean alone for one value."""
    if not summary:
        return "-"
    if summary.get(spread) is None:
        return f"{summary['mean']:.4f}"
    return f"{summary['mean']:.4f} ± {summary[spread]:.4f}"
