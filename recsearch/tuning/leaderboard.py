"""The leaderboard: every trial of every family, ranked on its best validation value, with
why it ended and, for the configurations re-evaluated on fresh seeds, the mean and 95%
interval of the selection metric over them (validation, and test); written as
``leaderboard.csv`` and printed as a table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from recsearch.evaluation.metrics import metric_mode, valid_key
from recsearch.output import format_table
from recsearch.stats import plus_minus
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import Trial

COLUMNS = ("rank", "trial", "family", "status", "best_epoch", "epochs", "stopped")
SEED_COLUMNS = ("seeds", "valid_mean", "valid_ci95", "test_mean", "test_ci95")  # re-evaluated rows only


def leaderboard(plan: SweepPlan, trials: list[Trial]) -> list[dict[str, Any]]:
    """One row per trial: finished trials ranked by their best validation value (the epoch whose
    state its checkpoints keep), then errored and unfinished ones."""
    metric = plan.first["task"]["metric"]
    rows = []
    for trial in trials:
        config = plan.configs[trial.family]
        best = trial.best(metric)
        rows.append({
            "rank": None,
            "trial": trial.name,
            "family": trial.family,
            "status": trial.status,
            metric: best[valid_key(metric)] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "epochs": trial.history[-1]["epoch"] if trial.history else 0,
            "stopped": stopped_by(trial, config),
            "hparams": trial.hparams,
            "error": trial.error,
        })
    finished = [r for r in rows if r["status"] == "TERMINATED" and r[metric] is not None]
    finished.sort(key=lambda r: -r[metric] if metric_mode(metric) == "max" else r[metric])
    for rank, row in enumerate(finished, 1):
        row["rank"] = rank
    return finished + [r for r in rows if r["rank"] is None]


def add_reevaluation(board: list[dict[str, Any]], reevaluation: dict[str, Any] | None, metric: str) -> None:
    """The re-evaluated rows get the selection metric's mean and 95% interval over their fresh
    seeds (``recsearch.tuning.reevaluation.outcome``), and the chosen one a mark; rows whose
    re-evaluation has no finished run yet stay as they are."""
    for candidate in (reevaluation or {}).get("candidates", []):
        if not candidate["runs"]:
            continue
        row = next(r for r in board if r["trial"] == candidate["trial"])
        valid, test = candidate["valid"].get(metric), candidate["test"].get(metric)
        row.update(seeds=candidate["runs"], chosen=candidate["trial"] == reevaluation["chosen"],
                   valid_mean=valid and valid["mean"], valid_ci95=valid and valid["ci95"],
                   test_mean=test and test["mean"], test_ci95=test and test["ci95"],
                   valid_seeds=plus_minus(valid), test_seeds=plus_minus(test))


def stopped_by(trial: Trial, config: dict[str, Any]) -> str:
    """Why a trial ended: asha, patience (its own early stopping), no (ran its course; closed-form
    fits always), error, or unfinished."""
    if trial.status == "ERROR":
        return "error"
    if trial.status != "TERMINATED":
        return "unfinished"
    if not config["iterative"] or not trial.history:
        return "no"
    last = trial.history[-1]
    if last.get("stopped", last.get("stale_epochs", 0) >= config["train"]["patience"]):  # before "stopped" was reported
        return "patience"
    if last["epoch"] < config["train"]["max_epochs"] and config["scheduler"]["name"] == "asha":
        return "asha"
    return "no"


def write_csv(board: list[dict[str, Any]], metric: str, path: Path) -> None:
    fields = [*COLUMNS[:4], metric, *SEED_COLUMNS, *COLUMNS[4:], "hparams", "error"]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in board:
            writer.writerow({**row, "hparams": json.dumps(row["hparams"], sort_keys=True)})


def print_board(board: list[dict[str, Any]], metric: str) -> None:
    rows = [{**row, "rank": row["rank"] or "-", "hyperparameters": format_params(row["hparams"]),
             "chosen": "*" if row.get("chosen") else ""} for row in board]
    seeds = ["seeds", "valid_seeds", "test_seeds", "chosen"] if any("seeds" in row for row in board) else []
    print(f"\nleaderboard (valid {metric}, {'higher' if metric_mode(metric) == 'max' else 'lower'} is better)")
    print(format_table(rows, ["rank", "trial", "family", metric, *seeds, "best_epoch", "epochs", "stopped",
                              "hyperparameters"]))
    if seeds:
        print(f"valid_seeds, test_seeds: mean ± 95% CI of {metric} over the fresh seeds of the re-evaluation; "
              "* = chosen, by the validation mean")


def format_params(hparams: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(hparams.items()))
