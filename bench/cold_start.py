"""Cold start on MovieLens 100K: users held out whole (``data.split.scheme=cold_users``, 10% of
users for valid, 10% for test, seed 42) are known to the model only by their profile (age
bucket, gender, occupation); items held out whole (``cold_items``) only by their genres and
release decade, and each part ranks only its own held-out items.

Rows: global popularity, segment popularity (``segpop``: age x gender, and every user feature),
a seeded random ranking (cold items, where popularity knows nothing), ``deepcf`` without
features (ids only: every held-out entity is the same nobody) and with features over a small
grid. Each family's row is chosen by validation NDCG@10; only the chosen rows are evaluated on
test. Writes ``bench/results/cold_start.{json,md}``.

    .venv/bin/python bench/cold_start.py
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
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
        "deepcf (no features)": [{**DEEPCF, "use_features": False}],
        "deepcf": [{**DEEPCF, "loss": loss, "user_id_dropout": drop}
                   for loss, drop in [("bce", 1.0), ("softmax", 0.5), ("softmax", 1.0)]],
    },
    "cold_items": {
        "random": [{}],
        "pop": [{}],
        "deepcf (no features)": [{**DEEPCF, "use_features": False}],
        "deepcf": [{**DEEPCF, "loss": loss, "item_id_dropout": drop}
                   for loss, drop in itertools.product(["bce", "softmax"], [0.5, 1.0])],
    },
}
FAMILY = {"deepcf (no features)": "deepcf", "random": "pop"}  # row -> registered family
METRICS = ["ndcg@10", "recall@20"]
COLUMNS = ["split", "model", "hyperparameters", "best epoch", "valid ndcg@10", "valid recall@20", "test ndcg@10",
           "test recall@20", "chosen"]


class RandomScores(Recommender):
    """A seeded random ranking: the floor for items that no interaction describes."""

    family = "random"

    def fit_prepared(self, epochs=None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        self.scores = torch.rand(self.n_items, generator=generator)

    def state(self):
        return {"scores": self.scores}

    def load_state(self, state):
        self.scores = state["scores"]

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(len(users), -1).clone()


def fitted(name: str, hparams: dict, split, evaluator) -> tuple[Recommender, int]:
    if name == "random":
        return RandomScores(seed=SEED, device="cpu").fit(split.train), 0
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
        cfg = load_config(["data=ml-100k", f"seed={SEED}", f"data.split.scheme={scheme}"])
        split = load_split(to_container(cfg.data), SEED, None)
        for name, grid in families.items():
            trained = []
            for hparams in grid:
                model, best_epoch = fitted(name, hparams, split, evaluator)
                valid = evaluator.evaluate(model, split, "valid")
                row = {"split": scheme, "model": name, "hyperparameters": str(hparams), "best epoch": best_epoch,
                       **{f"valid {m}": round(valid[m], 4) for m in METRICS},
                       **{f"test {m}": "" for m in METRICS}, "chosen": ""}
                print(row, flush=True)
                trained.append((row, model))
            row, model = max(trained, key=lambda pair: pair[0]["valid ndcg@10"])
            test = evaluator.evaluate(model, split, "test")  # the chosen configuration only
            row.update({**{f"test {m}": round(test[m], 4) for m in METRICS}, "chosen": "yes"})
            if scheme == "cold_items":
                row["test candidates"] = len(split.candidates["test"])
            rows += [r for r, _ in trained]
    write_results(HERE / "results" / "cold_start", rows, COLUMNS,
                  f"Cold start on ml-100k (cold_users / cold_items, ratios 0.8/0.1/0.1 of the entities, seed {SEED}); "
                  f"deepcf {DEEPCF}, early stopping on valid NDCG@10 (patience {PATIENCE}); test only for the row "
                  "of each model chosen on valid", grids={k: {f: [str(h) for h in g] for f, g in v.items()}
                                                           for k, v in GRIDS.items()})


if __name__ == "__main__":
    main()
