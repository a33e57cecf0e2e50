"""Model quality on MovieLens 100K with every family's default config, as ``recsearch train``
gives it: per-user random 0.8/0.1/0.1 split, seed 42, full ranking; the LSTM also on temporal
leave-one-out (its own bar is relative to popularity on that split), biased MF also on the
explicit ratings. Writes ``bench/results/quality.{json,md}``.

    .venv/bin/python bench/quality.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from record import write_results

from recsearch.config import load_config
from recsearch.output import format_table
from recsearch.training import train_command

HERE = Path(__file__).resolve().parent
# (model, task, extra overrides)
RUNS = [
    ("pop", "ranking", []),
    ("itemknn", "ranking", []),
    ("userknn", "ranking", []),
    ("ease", "ranking", []),
    ("mf", "ranking", []),
    ("ncf", "ranking", []),
    ("lstm", "ranking", []),
    ("pop", "ranking", ["data.split.scheme=loo"]),
    ("lstm", "ranking", ["data.split.scheme=loo"]),
    ("mf", "rating", []),
    ("itemknn", "rating", []),
]
COLUMNS = ["model", "task", "split", "valid ndcg@10", "test ndcg@10", "test recall@10", "test rmse", "epochs",
           "fit seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(HERE / "results" / "tmp" / "quality"), help="run folders")
    parser.add_argument("--result", default=str(HERE / "results" / "quality"), help="results, without suffix")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for model, task, extra in RUNS:
        overrides = [f"model={model}", "data=ml-100k", f"task={task}", *extra]
        metrics = train_command(load_config([*overrides, f"out={args.out}/{stamp}/{len(rows)}-{model}-{task}"]))
        rows.append({
            "model": model, "task": task, "split": metrics["split"],
            "valid ndcg@10": metrics["valid"].get("ndcg@10"), "test ndcg@10": metrics["test"].get("ndcg@10"),
            "test recall@10": metrics["test"].get("recall@10"), "test rmse": metrics["test"].get("rmse"),
            "epochs": metrics["epochs"], "fit seconds": metrics["fit_seconds"],
            "command": "recsearch train " + " ".join(overrides),
        })
    print(format_table(rows, COLUMNS))
    write_results(args.result, rows, COLUMNS, "ml-100k, seed 42, every family's default config")


if __name__ == "__main__":
    main()
