"""``recsearch cv``: one configuration trained on every fold, mean ± std over the folds."""

from __future__ import annotations

import json

import pytest

from recsearch.cli import main

SMALL = ["data=synthetic", "data.source.n_users=200", "data.source.n_items=100", "data.source.n_interactions=4000"]


def test_cv_trains_every_fold_and_summarises_them(tmp_path, capsys):
    out = tmp_path / "cv"
    assert main(["cv", "model=pop", *SMALL, "data.split.folds=3", f"out={out}"]) == 0
    result = json.loads((out / "cv.json").read_text())
    assert result["folds"] == 3 and [f["fold"] for f in result["per_fold"]] == [0, 1, 2]
    values = [fold["test"]["ndcg@10"] for fold in result["per_fold"]]
    summary = result["test"]["ndcg@10"]
    assert summary["values"] == values and summary["mean"] == pytest.approx(sum(values) / 3)
    assert len(set(values)) == 3, "each fold tests other interactions"
    assert summary["std"] > 0 and summary["ci95"] > summary["std"]  # t(0.975, 2) / sqrt(3) = 2.48
    assert all((out / f"fold-{fold}" / "metrics.json").is_file() for fold in range(3))
    tested = sum(fold["sizes"]["test"] for fold in result["per_fold"])
    total = sum(result["per_fold"][0]["sizes"].values())  # after de-duplication, less a few cold rows
    assert 0.97 * total < tested < 1.03 * total, "together the folds test every interaction once, cold rows aside"
    assert "3-fold cross-validation of pop" in capsys.readouterr().out


def test_cv_refuses_another_scheme(tmp_path, capsys):
    assert main(["cv", "model=pop", *SMALL, "data.split.scheme=loo", f"out={tmp_path}"]) == 2
    assert "recsearch cv splits with data.split.scheme=kfold, not loo" in capsys.readouterr().err
