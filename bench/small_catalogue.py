"""What works on a small catalogue? MovieLens 100K's random 0.8/0.1/0.1 split (seed 42, the
split of RecBole's table, where its best row, EASE, scores test NDCG@10 0.330): the strongest
item-item models (EASE, RP3beta, ItemKNN), UserKNN, BPR-MF, Mult-VAE, and ensembles of them.

Members train with their sweep winners' hyperparameters (``bench/results/ml100k_sweeps.md``;
RP3beta's sweep chose its default); iterative ones under the
training loop's early stopping. An ensemble adds the members' scores, each standardised per user
(mean 0, standard deviation 1 over the catalogue), with weights chosen greedily on validation
NDCG@10 (Caruana et al. 2004: start from the best member, repeatedly add the member and weight
that raise validation NDCG@10 most, stop when none does). Only the chosen ensemble is evaluated
on test. Writes ``bench/results/small_catalogue.{json,md}``.

    .venv/bin/python bench/small_catalogue.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.base import Recommender
from recsearch.models.factory import build_model
from recsearch.output import format_table
from recsearch.runtime import configure_threads, seed_everything
from recsearch.training import Stopping, train

HERE = Path(__file__).resolve().parent
MEMBERS = {  # name -> (family, hyperparameters over conf/model/<family>.yaml, where they come from)
    "ease": ("ease", {"l2": 376.0}, "sweep winner"),
    "rp3beta": ("rp3beta", {}, "default = sweep winner"),
    "itemknn": ("itemknn", {"k": 72, "similarity": "cosine", "shrinkage": 20.0}, "sweep winner"),
    "userknn": ("userknn", {"k": 78, "similarity": "pearson", "shrinkage": 0.0}, "sweep winner"),
    "mf": ("mf", {"dim": 64, "lr": 0.005, "l2": 0.0046, "negatives": 8, "optimizer": "adam"}, "sweep winner"),
    "multvae": ("multvae", {"hidden": 600, "latent": 50, "dropout": 0.548160187538868, "anneal_cap": 0.25077032400831384,
                            "lr": 0.0007213440947562318, "batch_size": 32, "l2": 0.0}, "sweep winner"),
}
WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)  # a member's weight relative to the first one's 1
COLUMNS = ["model", "hyperparameters", "valid ndcg@10", "test ndcg@10", "test recall@10"]


class Blend(Recommender):
    """Weighted sum of fixed, per-user standardised score matrices (members already fitted)."""

    family = "blend"

    def __init__(self, parts: list[tuple[float, torch.Tensor]]):
        super().__init__(device="cpu")
        self.parts = parts

    def fit_prepared(self, epochs=None) -> None:
        pass

    def state(self):
        return {}

    def load_state(self, state) -> None:
        pass

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return sum(weight * scores[users] for weight, scores in self.parts)


def fitted(family: str, hparams: dict, split, evaluator: Evaluator, metric: str) -> Recommender:
    cfg = load_config([f"model={family}", "data=ml-100k"])
    seed_everything(cfg.seed)
    model = build_model(to_container(cfg.model), seed=cfg.seed, device="cpu", task="ranking", **hparams)
    train(model, split, evaluator, metric, cfg.train.max_epochs, Stopping.of(cfg.train))
    return model


def standardised(model: Recommender, n_users: int) -> torch.Tensor:
    scores = torch.cat([model.score(torch.arange(s, min(s + 512, n_users))) for s in range(0, n_users, 512)])
    return (scores - scores.mean(1, keepdim=True)) / scores.std(1, keepdim=True).clamp(min=1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", default=str(HERE / "results" / "small_catalogue"), help="results, without suffix")
    args = parser.parse_args()
    configure_threads()
    cfg = load_config(["data=ml-100k"])
    split = load_split(to_container(cfg.data), cfg.seed, None)
    evaluator, metric = Evaluator.for_task(to_container(cfg.task)), cfg.task.metric

    rows, scores, valid = [], {}, {}
    for name, (family, hparams, origin) in MEMBERS.items():
        started = time.perf_counter()
        model = fitted(family, hparams, split, evaluator, metric)
        scores[name] = standardised(model, split.n_users)
        valid[name] = evaluator.evaluate(model, split, "valid")[metric]
        test = evaluator.evaluate(model, split, "test")
        rows.append({"model": name, "hyperparameters": f"{origin}: {model.hparams}", "valid ndcg@10": valid[name],
                     "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"],
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)

    def blend_valid(parts: list[tuple[float, str]]) -> float:
        return evaluator.evaluate(blended(parts), split, "valid")[metric]

    def blended(parts: list[tuple[float, str]]) -> Blend:
        model = Blend([(weight, scores[name]) for weight, name in parts])
        model.prepare(split.train)
        return model

    chosen = [(1.0, max(valid, key=valid.get))]
    best, steps = valid[chosen[0][1]], []
    while True:
        options = [(blend_valid([*chosen, (w, name)]), w, name) for name in MEMBERS for w in WEIGHTS]
        value, weight, name = max(options)
        if value <= best:
            break
        chosen.append((weight, name))
        best = value
        steps.append({"added": name, "weight": weight, "valid ndcg@10": value})
        print(steps[-1], flush=True)
    test = evaluator.evaluate(blended(chosen), split, "test")
    weights = {name: sum(w for w, n in chosen if n == name) for name in dict.fromkeys(n for _, n in chosen)}
    recipe = " + ".join(f"{w:g} {name}" for name, w in weights.items())
    rows.append({"model": "greedy ensemble", "hyperparameters": recipe, "valid ndcg@10": best,
                 "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"], "steps": steps})
    print(format_table(rows, COLUMNS))
    write_results(args.result, rows, COLUMNS, "ml-100k, random 0.8/0.1/0.1 split, seed 42; members and a "
                  "greedy ensemble chosen on validation NDCG@10 (its test evaluated once)",
                  notes=f"Ensemble: per-user standardised scores, {recipe}; weights from {list(WEIGHTS)}, "
                        "greedy forward selection with replacement on validation NDCG@10.")


if __name__ == "__main__":
    main()
