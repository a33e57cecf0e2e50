"""Cold start on MovieLens 100K: users held out whole (``data.split.scheme=cold_users``, 10% of
users for valid, 10% for test, seed 42) are known to the model only by their profile (age
bucket, gender, occupation); items held out whole (``cold_items``) only by their genres and
release decade, and each part ranks only its own held-out items.

Rows: global popularity, segment popularity (``segpop``: age x gender, and every user feature),
the same segments smoothed (``segpop (smoothed)``: neighbouring age buckets lend each other
their counts, weighted by distance),
the expected figures of a random ranking (cold items), ``deepcf`` without features (ids only:
every held-out entity is the same nobody) and with features over a small grid (for cold users
with and without age buckets sharing their embeddings, ``bandwidth``). For cold items
popularity and deepcf without features give every candidate the same score: their order is then
the order of item ids, which follow first appearance in ml-100k.inter and so correlate with
popularity; that tie order is what their rows measure. Each family's row is chosen by validation NDCG@10; only the chosen rows are evaluated on
test. Writes ``bench/results/cold_start.{json,md}``.

    .venv/bin/python bench/cold_start.py
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.base import Recommender
from recsearch.models.factory import build_model
from recsearch.runtime import configure_threads, seed_everything
from recsearch.training import Stopping, train

HERE = Path(__file__).resolve().parent
SEED = 42
MAX_EPOCHS, PATIENCE = 40, 5
DEEPCF = {"dim": 32, "lr": 0.003, "l2": 0.0}
GRIDS = {  # scheme -> family -> list of hyperparameter sets, each trained and compared on valid
    "cold_users": {
        "pop": [{}],
        "segpop": [{"segment": ["age", "gender"]}, {"segment": None}],
        # the baseline's own segments, neighbouring age buckets lending each other their counts
        "segpop (smoothed)": [{"segment": ["age", "gender"], "bandwidth": bandwidth} for bandwidth in [0.5, 1.0, 1.5, 2.0]],
        "deepcf (no features)": [{**DEEPCF, "use_features": False}],
        "deepcf": [{**DEEPCF, "loss": loss, "user_id_dropout": drop, "bandwidth": bandwidth}
                   for (loss, drop), bandwidth in itertools.product([("bce", 1.0), ("softmax", 0.5), ("softmax", 1.0)],
                                                                    [0.0, 1.0])],
    },
    "cold_items": {
        "pop": [{}],
        "deepcf (no features)": [{**DEEPCF, "use_features": False}],
        "deepcf": [{**DEEPCF, "loss": loss, "item_id_dropout": drop}
                   for loss, drop in itertools.product(["bce", "softmax"], [0.5, 1.0])],
    },
}
FAMILY = {"deepcf (no features)": "deepcf", "segpop (smoothed)": "segpop"}  # row -> registered family
# which user features the data gives the models (a data choice, compared on valid like the rest):
# segment popularity over all three fragments ml-100k's 755 training users too finely
FEATURE_SETS = {"age, gender, occupation": [], "age, gender": ["data.source.exclude=[zip_code,occupation]"]}
METRICS = ["ndcg@10", "recall@20"]
SPLIT_SEEDS = [SEED, 1, 2, 3, 4, 5]  # the benches that repeat this one over split seeds draw these
COLUMNS = ["split", "model", "user features", "hyperparameters", "best epoch", "valid ndcg@10", "valid recall@20", "test ndcg@10",
           "test recall@20", "chosen"]


def expected_random(split, part: str) -> dict[str, float]:
    """NDCG@10 and Recall@20 of a uniformly random ranking of the part's candidates, in
    expectation (exact: a target lands at each rank with probability 1 / C)::

        E[Recall@K] = K / C,   E[NDCG@K] = (T / C) sum_{r <= K} 1 / log2(r + 1) / IDCG@min(T, K)

    averaged over the users with T targets among C candidates (the test part masks nothing
    of its own candidates: they are held out of train and valid)."""
    rows = getattr(split, part)
    candidates = len(split.candidates[part])
    targets = np.bincount(rows.user)[np.unique(rows.user)].astype(np.float64)
    gains = 1.0 / np.log2(np.arange(2, candidates + 2))
    ideal = np.cumsum(gains)[np.minimum(targets, 10).astype(np.int64) - 1]
    return {"ndcg@10": float(np.mean(targets / candidates * gains[:10].sum() / ideal)),
            "recall@20": min(20, candidates) / candidates}


def split_seeds(doc: str) -> list[int]:
    """The ``--seeds`` of a bench that repeats this one over split seeds (its docstring: ``doc``)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=SPLIT_SEEDS, help="split seeds")
    return parser.parse_args().seeds


def fitted(name: str, hparams: dict, split, evaluator) -> tuple[Recommender, int]:
    family = FAMILY.get(name, name)
    cfg = load_config([f"model={family}", "data=ml-100k"])
    model = build_model(to_container(cfg.model), seed=SEED, device="cpu", task="ranking", **hparams)
    result = train(model, split, evaluator, "ndcg@10", MAX_EPOCHS, Stopping(PATIENCE))
    return model, result.best_epoch


def main() -> None:
    configure_threads(1)  # the machine is shared: two threads on its two cores oversubscribe it
    seed_everything(SEED)
    evaluator = Evaluator("ranking", ["ndcg", "recall"], [10, 20])
    rows = []
    for scheme, families in GRIDS.items():
        feature_sets = FEATURE_SETS if scheme == "cold_users" else dict(list(FEATURE_SETS.items())[:1])
        splits = {}
        for features, overrides in feature_sets.items():  # the same held-out users, other features
            cfg = load_config(["data=ml-100k", f"seed={SEED}", f"data.split.scheme={scheme}", *overrides])
            splits[features] = load_split(to_container(cfg.data), SEED, None)
        for name, grid in families.items():
            trained = []
            for (features, split), hparams in itertools.product(splits.items(), grid):
                if name == "pop" and features != next(iter(splits)):
                    continue  # reads no features
                model, best_epoch = fitted(name, hparams, split, evaluator)
                valid = evaluator.evaluate(model, split, "valid")
                row = {"split": scheme, "model": name, "user features": features, "hyperparameters": str(hparams),
                       "best epoch": best_epoch, **{f"valid {m}": round(valid[m], 4) for m in METRICS},
                       **{f"test {m}": "" for m in METRICS}, "chosen": ""}
                print(row, flush=True)
                trained.append((row, model, split))
            row, model, split = max(trained, key=lambda entry: entry[0]["valid ndcg@10"])
            test = evaluator.evaluate(model, split, "test")  # the chosen configuration only
            row.update({**{f"test {m}": round(test[m], 4) for m in METRICS}, "chosen": "yes"})
            if scheme == "cold_items":
                row["test candidates"] = len(split.candidates["test"])
            rows += [r for r, _, _ in trained]
        if scheme == "cold_items":
            floor = {part: expected_random(split, part) for part in ("valid", "test")}
            rows.append({"split": scheme, "model": "random (expected)", "user features": "", "hyperparameters": "",
                         "best epoch": "",
                         **{f"{part} {m}": round(floor[part][m], 4) for part in floor for m in METRICS},
                         "chosen": "yes", "test candidates": len(split.candidates["test"])})
    write_results(HERE / "results" / "cold_start", rows, COLUMNS,
                  f"Cold start on ml-100k (cold_users / cold_items, ratios 0.8/0.1/0.1 of the entities, seed {SEED}); "
                  f"deepcf {DEEPCF}, early stopping on valid NDCG@10 (patience {PATIENCE}); test only for the row "
                  "of each model chosen on valid (over the grid and the user feature sets)",
                  grids={k: {f: [str(h) for h in g] for f, g in v.items()} for k, v in GRIDS.items()},
                  feature_sets=FEATURE_SETS)


if __name__ == "__main__":
    main()
