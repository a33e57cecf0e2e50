"""What works on a small catalogue? MovieLens 100K's random 0.8/0.1/0.1 split (seed 42, the
split of RecBole's table, where its best row, EASE, scores test NDCG@10 0.330): the strongest
item-item models (EASE, RP3beta, ItemKNN), UserKNN, BPR-MF, Mult-VAE, and ensembles of them.

Members train with their sweep winners' hyperparameters (``bench/results/ml100k_sweeps.md``;
RP3beta's sweep chose its default); iterative ones under the
training loop's early stopping. An ensemble adds the members' scores, each standardised per user
(mean 0, standard deviation 1 over the catalogue), with weights chosen greedily on validation
NDCG@10 (Caruana et al. 2004: start from the best member, repeatedly add the member and weight
that raise validation NDCG@10 most, stop when none does). Only the chosen ensemble is evaluated
on test.

Two protocols side by side. "train": every model learns from the training part only, as in
RecBole's table. "train + valid" (``search.refit`` / ``train.refit``): once validation has chosen
a member's hyperparameters and its epoch count (its best epoch), a fresh model with them trains
on train + valid for exactly that many epochs (closed-form models: one fit), with no early
stopping; the refitted ensemble keeps the weights chosen on validation and blends the refitted
members. Validation figures are the selection's in both. Writes
``bench/results/small_catalogue.{json,md}``.

    .venv/bin/python bench/small_catalogue.py
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.base import Recommender
from recsearch.models.factory import build_model
from recsearch.output import format_table
from recsearch.runtime import configure_threads, seed_everything
from recsearch.training import Stopping, refit_record, train
from recsearch.tuning.blending import greedy, standardised_scores, weighted_sum

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
COLUMNS = ["model", "trained on", "hyperparameters", "valid ndcg@10", "test ndcg@10", "test recall@10"]


def fitted(family: str, hparams: dict, split, evaluator: Evaluator, metric: str,
           epochs: int | None = None) -> tuple[Recommender, int]:
    """The model trained under early stopping, and its best epoch; with ``epochs``, trained for
    exactly that many with no validation (a refit: ``split`` is then train + valid)."""
    cfg = load_config([f"model={family}", "data=ml-100k"])
    seed_everything(cfg.seed)
    model = build_model(to_container(cfg.model), seed=cfg.seed, device="cpu", task="ranking", **hparams)
    stopping = Stopping.of(cfg.train) if epochs is None else None
    result = train(model, split, evaluator, metric, epochs or cfg.train.max_epochs, stopping)
    return model, result.best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--result", default=str(HERE / "results" / "small_catalogue"), help="results, without suffix")
    args = parser.parse_args()
    configure_threads()
    cfg = load_config(["data=ml-100k"])
    split = load_split(to_container(cfg.data), cfg.seed, None)
    evaluator, metric = Evaluator.for_task(to_container(cfg.task)), cfg.task.metric

    refit_split = split.train_and_valid()
    rows, refit_rows, scores, refit_scores, valid = [], [], {}, {}, {}
    for name, (family, hparams, origin) in MEMBERS.items():
        started = time.perf_counter()
        model, best_epoch = fitted(family, hparams, split, evaluator, metric)
        scores[name] = standardised_scores(model, split.n_users)
        valid[name] = evaluator.evaluate(model, split, "valid")[metric]
        test = evaluator.evaluate(model, split, "test")
        rows.append({"model": name, "trained on": "train", "hyperparameters": f"{origin}: {model.hparams}",
                     "valid ndcg@10": valid[name], "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"],
                     "best_epoch": best_epoch, "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1], flush=True)
        started = time.perf_counter()
        model, _ = fitted(family, hparams, refit_split, evaluator, metric, epochs=best_epoch)
        refit_scores[name] = standardised_scores(model, split.n_users)
        test = evaluator.evaluate(model, refit_split, "test")
        refit_rows.append({**rows[-1], "trained on": f"train + valid, {best_epoch} epoch(s)",
                           "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"],
                           "refit": refit_record(refit_split, best_epoch),
                           "seconds": round(time.perf_counter() - started, 1)})
        print(refit_rows[-1], flush=True)

    names = list(MEMBERS)
    members = [scores[name] for name in names]
    weights, _, steps = greedy(lambda w: evaluator.evaluate_scores(weighted_sum(members, w), split, "valid")[metric],
                               len(names), WEIGHTS, max_steps=100)
    best = evaluator.evaluate_scores(weighted_sum(members, weights), split, "valid")[metric]
    steps = [{"added": names[s["member"]], "weight": s["weight"], "valid ndcg@10": s["valid"]} for s in steps]
    test = evaluator.evaluate_scores(weighted_sum(members, weights), split, "test")
    recipe = " + ".join(f"{w:g} {name}" for name, w in zip(names, weights, strict=True) if w)
    rows.append({"model": "greedy ensemble", "trained on": "train", "hyperparameters": recipe, "valid ndcg@10": best,
                 "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"], "steps": steps})
    # the same weights, over the members refitted on train + valid
    test = evaluator.evaluate_scores(weighted_sum([refit_scores[name] for name in names], weights), refit_split, "test")
    refit_rows.append({**rows[-1], "trained on": "train + valid (members refitted)",
                       "test ndcg@10": test["ndcg@10"], "test recall@10": test["recall@10"]})
    rows += refit_rows
    print(format_table(rows, COLUMNS))
    write_results(args.result, rows, COLUMNS, "ml-100k, random 0.8/0.1/0.1 split, seed 42; members and a "
                  "greedy ensemble chosen on validation NDCG@10 (each test evaluated once), trained on train "
                  "(RecBole's protocol) and refitted on train + valid for their chosen epoch counts",
                  notes=f"Ensemble: per-user standardised scores, {recipe}; weights from {list(WEIGHTS)}, "
                        "greedy forward selection with replacement on validation NDCG@10 (train-only members); "
                        "the refitted ensemble blends the refitted members with those weights. Validation "
                        "figures are the selection's in both halves.")


if __name__ == "__main__":
    main()
