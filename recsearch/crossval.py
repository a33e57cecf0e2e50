"""``recsearch cv``: k-fold cross-validation of one configuration.

The data is split per user into ``data.split.folds`` folds (``data.split.scheme=kfold``); for
each fold ``recsearch train`` runs with that fold as the test part (and ``valid_share`` of the
rest for early stopping), writing its own ``fold-<i>/metrics.json`` and model. Every
interaction is tested exactly once over the folds. ``cv.json`` holds each fold's metrics and,
per metric, the mean, the standard deviation over folds and the 95% interval of the mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsearch.config import load_config
from recsearch.errors import ConfigError
from recsearch.output import check_writable, format_table, write_json
from recsearch.stats import plus_minus, summarize
from recsearch.training import train_command


def cv_command(overrides: list[str]) -> dict[str, Any]:
    chosen = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "data.split.scheme"]
    if chosen and chosen[-1] != "kfold":
        raise ConfigError(f"recsearch cv splits with data.split.scheme=kfold, not {chosen[-1]}")
    overrides = [*overrides, "data.split.scheme=kfold"]
    cfg = load_config(overrides)  # everything checked once, before the first fold trains
    out, folds = Path(cfg.out), cfg.data.split.folds
    check_writable(out)
    runs = []
    for fold in range(folds):
        print(f"\n== fold {fold + 1} of {folds}", flush=True)
        runs.append(train_command(load_config([*overrides, f"data.split.fold={fold}", f"out={out}/fold-{fold}"])))
    valid, test = summarize(run["valid"] for run in runs), summarize(run["test"] for run in runs)
    result = {
        "model": runs[0]["model"], "data": runs[0]["data"], "task": runs[0]["task"], "seed": cfg.seed,
        "folds": folds, "valid_share": cfg.data.split.valid_share, "hparams": runs[0]["hparams"],
        "valid": valid, "test": test,
        "per_fold": [{"fold": fold, "valid": run["valid"], "test": run["test"], "best_epoch": run["best_epoch"],
                      "epochs": run["epochs"], "refit": run["refit"], "sizes": run["sizes"]}  # refit: train.refit
                     for fold, run in enumerate(runs)],
    }
    write_json(out / "cv.json", result)
    rows = [{"metric": name, "valid (mean ± std)": plus_minus(valid.get(name), "std"),
             "test (mean ± std)": plus_minus(test[name], "std"), "test 95% CI": plus_minus(test[name])}
            for name in test]
    print(f"\n{folds}-fold cross-validation of {result['model']} on {result['data']} ({result['task']})")
    print(format_table(rows))
    print(f"wrote {out}/cv.json and fold-0 .. fold-{folds - 1}/")
    return result
