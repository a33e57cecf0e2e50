"""Feature-aware rating on MovieLens 100K: ``deepcf`` (ids + user age/gender/occupation + item
genres/release decade, MSE) against itself without features, on the random 0.8/0.1/0.1 split
(seed 42) of the other ml-100k tables. A small grid per variant; each configuration trains
under early stopping on validation RMSE, the best one by validation RMSE is the only one
evaluated on test, then retrained on two fresh model seeds (same split). Writes ``bench/results/deepcf_rating.{json,md}``.

    .venv/bin/python bench/deepcf_rating.py
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.factory import build_model
from recsearch.runtime import configure_threads, seed_everything
from recsearch.training import Stopping, train

HERE = Path(__file__).resolve().parent
SEED = 42
GRID = {"dim": [32, 64], "l2": [0.03, 0.05, 0.1], "layers": [[], [32]]}  # lr 0.003, batch 1024
FIXED = {"lr": 0.003}
MAX_EPOCHS, PATIENCE = 60, 5
FRESH_SEEDS = (43, 44)
COLUMNS = ["features", "dim", "l2", "layers", "best epoch", "valid rmse", "test rmse", "test mae", "chosen"]


def eval_layers(text: str) -> list[int]:
    """The layers column back as a list ("[]", "[32]")."""
    return [int(w) for w in text.strip("[]").split(",") if w.strip()]


def main() -> None:
    configure_threads(1)  # one thread: the machine is shared, and two oversubscribe its two cores
    seed_everything(SEED)
    cfg = load_config(["data=ml-100k", "task=rating", f"seed={SEED}", "model=deepcf"])
    split = load_split(to_container(cfg.data), SEED, None)
    evaluator = Evaluator("rating", ["rmse", "mae"])
    rows = []
    for use_features in (True, False):
        trained = []
        for dim, l2, layers in itertools.product(*GRID.values()):
            hparams = {**FIXED, "dim": dim, "l2": l2, "layers": layers, "use_features": use_features}
            model = build_model(to_container(cfg.model), seed=SEED, device="cpu", task="rating", **hparams)
            start = time.perf_counter()
            result = train(model, split, evaluator, "rmse", MAX_EPOCHS, Stopping(PATIENCE))
            row = {"features": use_features, "dim": dim, "l2": l2, "layers": str(layers),
                   "best epoch": result.best_epoch, "valid rmse": round(result.best_valid["rmse"], 4),
                   "test rmse": "", "test mae": "", "chosen": "", "seconds": round(time.perf_counter() - start, 1)}
            print(row, flush=True)
            trained.append((row, model))
        row, model = min(trained, key=lambda pair: pair[0]["valid rmse"])
        test = evaluator.evaluate(model, split, "test")  # the chosen configuration only
        row.update({"test rmse": round(test["rmse"], 4), "test mae": round(test["mae"], 4), "chosen": "yes"})
        rows += [r for r, _ in trained]
        chosen = {"dim": row["dim"], "l2": row["l2"], "layers": eval_layers(row["layers"])}
        for seed in FRESH_SEEDS:  # the chosen configuration again, on fresh model seeds (same split)
            model = build_model(to_container(cfg.model), seed=seed, device="cpu", task="rating",
                                **{**FIXED, **chosen, "use_features": use_features})
            result = train(model, split, evaluator, "rmse", MAX_EPOCHS, Stopping(PATIENCE))
            test = evaluator.evaluate(model, split, "test")
            rows.append({**row, "best epoch": result.best_epoch, "valid rmse": round(result.best_valid["rmse"], 4),
                         "test rmse": round(test["rmse"], 4), "test mae": round(test["mae"], 4),
                         "chosen": f"model seed {seed}"})
            print(rows[-1], flush=True)
    write_results(HERE / "results" / "deepcf_rating", rows, COLUMNS,
                  f"deepcf task=rating on ml-100k (random 0.8/0.1/0.1, seed {SEED}), grid {GRID} with {FIXED}, "
                  f"early stopping on valid RMSE (patience {PATIENCE}); test only for the row chosen on valid and its "
                  f"retraining on model seeds {FRESH_SEEDS}",
                  grid=GRID, fixed=FIXED)


if __name__ == "__main__":
    main()
