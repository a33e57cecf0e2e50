"""Where early stopping ends each iterative family's default config on MovieLens 100K, and
what that costs in test NDCG@10 (RMSE for ratings): the old rule (stop after ``patience``
epochs without a better raw validation value) against the current one (``conf/config.yaml``:
a smoothed trend, patience growing with the best epoch, a per-family warm-up).

Each default trains once to ``train.max_epochs`` with nothing stopping it, and its validation
and test metrics are recorded every epoch (the test split only for this measurement). Both rules
then read the same validation curve through ``recsearch.training.EarlyStopping``, the class the
training loop stops with, so each row shows exactly where ``recsearch train`` stops, which epoch
it keeps and that epoch's test metric; beside them the full run's validation peak and the best
test value of any epoch (hindsight, for reference). Writes ``bench/results/early_stopping.{json,md}``.

    .venv/bin/python bench/early_stopping.py                     # every row, seeds 42 and 43
    .venv/bin/python bench/early_stopping.py --rows mf-quarter --seeds 42
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.evaluation.metrics import metric_mode, valid_key
from recsearch.models.factory import build_model
from recsearch.output import format_table
from recsearch.runtime import configure_threads, seed_everything
from recsearch.training import EarlyStopping, Stopping, train

HERE = Path(__file__).resolve().parent
QUARTER = ["data.split.scheme=kfold", "data.split.folds=4", "data.split.valid_share=0.1"]  # the split
ROWS = {  # row -> (family, split label, overrides)
    "mf-quarter": ("mf", "25% held out, 10% valid", QUARTER),
    "mf-random": ("mf", "random 0.8/0.1/0.1", []),
    "mf-rating": ("mf", "ratings, random 0.8/0.1/0.1", ["task=rating"]),
    "ncf-quarter": ("ncf", "25% held out, 10% valid", QUARTER),
    "ncf-random": ("ncf", "random 0.8/0.1/0.1", []),
    "lstm-quarter": ("lstm", "25% held out, 10% valid", QUARTER),
    "lstm-random": ("lstm", "random 0.8/0.1/0.1", []),
    "lstm-loo": ("lstm", "leave-one-out", ["data.split.scheme=loo"]),
}
COLUMNS = ["row", "seed", "epochs run", "old: stop / kept", "old: test", "new: stop / kept", "new: test",
           "valid peak: epoch / test", "best test (epoch)"]


def curve(overrides: list[str]) -> tuple[list[dict], dict]:
    """Validation and test metric of every epoch of a run nothing stops; and the config."""
    cfg = load_config(overrides)
    config, task = to_container(cfg), to_container(cfg.task)
    seed_everything(cfg.seed)
    split = load_split(config["data"], cfg.seed, task["implicit_threshold"])
    evaluator = Evaluator.for_task(task, batch_size=cfg.train.eval_batch_size)
    model = build_model(config["model"], seed=cfg.seed, device=cfg.device, task=task["name"])
    metric, points = task["metric"], []

    def record(end) -> None:
        test = evaluator.evaluate(model, split, "test")[metric]
        points.append({"epoch": end.row["epoch"], "valid": end.row[valid_key(metric)], "test": test})

    train(model, split, evaluator, metric, cfg.train.max_epochs, cfg.train.max_epochs + 1, on_epoch=record)
    return points, config


def replay(points: list[dict], stopper: EarlyStopping) -> tuple[int, int]:
    """(the epoch after which ``stopper`` ends training, the epoch it keeps)."""
    for point in points:
        stopper.update(point["valid"], point["epoch"])
        if stopper.should_stop:
            break
    return point["epoch"], stopper.best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows of ROWS")
    parser.add_argument("--seeds", default="42,43", help="comma-separated seeds (the split's and the model's)")
    parser.add_argument("--result", default=str(HERE / "results" / "early_stopping"), help="results, without suffix")
    args = parser.parse_args()
    configure_threads()

    rows = []
    for name in args.rows.split(","):
        family, label, overrides = ROWS[name]
        for seed in map(int, args.seeds.split(",")):
            started = time.perf_counter()
            points, config = curve([f"model={family}", "data=ml-100k", f"seed={seed}", *overrides])
            mode, loop = metric_mode(config["task"]["metric"]), config["train"]
            test = {p["epoch"]: p["test"] for p in points}
            old = replay(points, EarlyStopping(mode, loop["patience"]))
            new = replay(points, Stopping.of(loop).stopper(mode))
            pick = max if mode == "max" else min
            peak, best_test = pick(points, key=lambda p: p["valid"]), pick(points, key=lambda p: p["test"])
            rows.append({
                "row": name, "family": family, "split": label, "seed": seed, "metric": config["task"]["metric"],
                "settings": {k: loop[k] for k in ("max_epochs", "patience", "patience_ratio", "smoothing", "min_epochs")},
                "epochs run": len(points), "old_stop": old[0], "old_kept": old[1], "old_test": test[old[1]],
                "new_stop": new[0], "new_kept": new[1], "new_test": test[new[1]],
                "peak_epoch": peak["epoch"], "peak_test": peak["test"],
                "best_test_epoch": best_test["epoch"], "best_test": best_test["test"],
                "seconds": round(time.perf_counter() - started, 1), "curve": points,
                "command": "recsearch train " + " ".join([f"model={family}", "data=ml-100k", f"seed={seed}", *overrides]),
            })
            print({k: v for k, v in rows[-1].items() if k != "curve"}, flush=True)
    rows = merged(Path(f"{args.result}.json"), rows)
    shown = [{**row, "old: stop / kept": f"{row['old_stop']} / {row['old_kept']}", "old: test": row["old_test"],
              "new: stop / kept": f"{row['new_stop']} / {row['new_kept']}", "new: test": row["new_test"],
              "valid peak: epoch / test": f"{row['peak_epoch']} / {row['peak_test']:.4f}",
              "best test (epoch)": f"{row['best_test']:.4f} ({row['best_test_epoch']})"} for row in rows]
    print(format_table(shown, COLUMNS))
    write_results(args.result, rows, COLUMNS,
                  "ml-100k, each iterative family's default config trained to train.max_epochs; test NDCG@10 "
                  "(RMSE for ratings) of the epoch each early-stopping rule keeps", shown=shown,
                  notes="old: patience epochs without a better raw validation value (the rule before this "
                        "change). new: conf/config.yaml's train settings with the family's own "
                        "(smoothing 0.7, patience_ratio 0.5, min_epochs per family). Rows of earlier runs "
                        "of this script (--rows) are kept: each row's JSON has its `recsearch train` "
                        "command and its whole curve.")


def merged(result: Path, new_rows: list[dict]) -> list[dict]:
    """The rows of an earlier result file with these new ones in place of their namesakes (same
    row and seed), in ROWS order, so that rerunning some rows keeps the others."""
    key = lambda row: (row["row"], row["seed"])  # noqa: E731
    by_key = {key(row): row for row in json.loads(result.read_text())["rows"]} if result.exists() else {}
    by_key.update({key(row): row for row in new_rows})
    return sorted(by_key.values(), key=lambda row: (list(ROWS).index(row["row"]), row["seed"]))


if __name__ == "__main__":
    main()
