"""k-fold cross-validation on MovieLens 100K with ``recsearch cv``: biased MF on the explicit
ratings with 5 folds, Surprise's protocol (its published RMSE: SVD 0.934, SVD++ 0.919, also
5 folds of ml-100k), and EASE's ranking quality over the same 5 folds. Writes
``bench/results/crossval.{json,md}``.

    .venv/bin/python bench/crossval.py

Surprise fits on all four training folds for a fixed number of epochs; recsearch keeps
``data.split.valid_share`` (10%) of them for early stopping, so it trains on 72% of the data
against Surprise's 80%.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from record import write_results

from recsearch.crossval import cv_command
from recsearch.stats import plus_minus

HERE = Path(__file__).resolve().parent
RUNS = [  # (row, overrides, metrics shown)
    ("mf rating", ["model=mf", "task=rating"], ["rmse", "mae"]),
    ("ease ranking", ["model=ease"], ["ndcg@10", "recall@10"]),
]
COLUMNS = ["row", "folds", "metric", "test mean ± std", "95% CI of the mean", "per fold", "command"]
# Surprise's published ml-100k RMSE (its README's benchmark table, 5-fold CV): quoted, not run here
ANCHORS = [{"row": "Surprise SVD (published)", "folds": 5, "metric": "rmse", "test mean ± std": "0.934"},
           {"row": "Surprise SVD++ (published)", "folds": 5, "metric": "rmse", "test mean ± std": "0.919"}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / "tmp" / "crossval"), help="run folders")
    parser.add_argument("--result", default=str(HERE / "results" / "crossval"), help="results, without suffix")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for row, overrides, metrics in RUNS:
        overrides = [*overrides, "data=ml-100k", f"data.split.folds={args.folds}"]
        result = cv_command([*overrides, f"out={args.out}/{stamp}/{row.replace(' ', '-')}"])
        for metric in metrics:
            test = result["test"][metric]
            rows.append({"row": row, "folds": args.folds, "metric": metric, "mean": test["mean"], "std": test["std"],
                         "ci95": test["ci95"], "values": test["values"],
                         "epochs": [fold["epochs"] for fold in result["per_fold"]],
                         "command": "recsearch cv " + " ".join(overrides)})
    shown = [{**row, "test mean ± std": plus_minus(row, "std"), "95% CI of the mean": plus_minus(row),
              "per fold": " ".join(f"{v:.4f}" for v in row["values"])} for row in rows] + ANCHORS
    write_results(args.result, rows, COLUMNS, f"ml-100k, seed 42, {args.folds} folds per user "
                  "(data.split.scheme=kfold, valid_share 0.1), each fold's test part once", shown=shown)


if __name__ == "__main__":
    main()
