"""Means and Student-t confidence intervals of repeated runs, against numbers worked by hand."""

from __future__ import annotations

import math

import pytest

from recsearch.stats import estimate, plus_minus, summarize


def test_three_seeds_give_the_student_t_interval():
    # mean 0.32; s = sqrt((0.02² + 0 + 0.02²) / 2) = 0.02; t(0.975, 2) = 4.302653; 4.302653 * 0.02 / sqrt(3) = 0.049683
    result = estimate([0.30, 0.32, 0.34])
    assert result["n"] == 3 and result["mean"] == pytest.approx(0.32)
    assert result["std"] == pytest.approx(0.02)
    assert result["ci95"] == pytest.approx(0.049683, abs=1e-6)


def test_five_folds_and_two_seeds():
    # 1..5: mean 3, s = sqrt(10 / 4) = 1.581139; t(0.975, 4) = 2.776445; half-width 1.963243
    folds = estimate([1, 2, 3, 4, 5])
    assert folds["std"] == pytest.approx(math.sqrt(2.5)) and folds["ci95"] == pytest.approx(1.963243, abs=1e-6)
    # two values 0.1, 0.2: s = 0.0707107, t(0.975, 1) = 12.706205; half-width 0.635310
    assert estimate([0.1, 0.2])["ci95"] == pytest.approx(0.635310, abs=1e-6)


def test_one_value_has_no_spread_and_nothing_is_an_error():
    assert estimate([0.25]) == {"mean": 0.25, "std": None, "ci95": None, "n": 1, "values": [0.25]}
    assert plus_minus(estimate([0.25])) == "0.2500"
    with pytest.raises(ValueError, match="at least one"):
        estimate([])
    with pytest.raises(ValueError, match="finite"):
        estimate([0.1, float("nan")])


def test_summarize_groups_runs_by_metric_and_plus_minus_formats():
    runs = [{"ndcg@10": 0.30, "recall@10": 0.2}, {"ndcg@10": 0.32, "recall@10": 0.2}, {"ndcg@10": 0.34, "recall@10": 0.2}]
    summary = summarize(runs)
    assert set(summary) == {"ndcg@10", "recall@10"}
    assert summary["recall@10"]["std"] == pytest.approx(0.0, abs=1e-12) and summary["recall@10"]["n"] == 3
    assert plus_minus(summary["ndcg@10"]) == "0.3200 ± 0.0497"
    assert plus_minus(summary["ndcg@10"], "std") == "0.3200 ± 0.0200"
    assert plus_minus(None) == "-"
