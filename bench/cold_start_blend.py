"""Do segment popularity and deepcf's features-only path know different things about a new
user? For each split seed this trains both (the configurations ``cold_start.py`` chose on
validation), standardises each one's scores per user over the catalogue and ranks the cold users
by (1 - w) z(segpop) + w z(deepcf), w chosen on validation NDCG@10 over a grid; test is read for
the chosen w only. Reports, paired by seed, the blend's test gap to segment popularity: the
issue's cold-user target is "above segment popularity". Writes
``bench/results/cold_start_blend.{json,md}``.

    .venv/bin/python bench/cold_start.py          # first: chooses the configurations
    .venv/bin/python bench/cold_start_blend.py [--seeds 42 1 2 3 4 5]
"""

from __future__ import annotations

import ast

import torch
from cold_start import FEATURE_SETS, HERE, fitted, split_seeds
from cold_start_seeds import chosen_rows
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.runtime import configure_threads, seed_everything
from recsearch.stats import estimate, plus_minus

WEIGHTS = [i / 10 for i in range(11)]  # deepcf's share; 0 is segment popularity alone
COLUMNS = ["seed", "chosen weight", "valid ndcg@10", "test ndcg@10", "segpop test ndcg@10", "deepcf test ndcg@10",
           "test minus segpop"]


class Standardised:
    """Two fitted models' scores, each standardised per user over the catalogue, mixed with weight
    ``w`` on the second: enough of a model for the evaluator (ids, device, ``score``)."""

    reads_sequence = False

    def __init__(self, first, second, w: float):
        self.first, self.second, self.w = first, second, w
        self.n_users, self.n_items, self.device = first.n_users, first.n_items, first.device

    def score(self, users) -> torch.Tensor:
        z = [(s - s.mean(1, keepdim=True)) / s.std(1, keepdim=True).clamp_min(1e-12)
             for s in (self.first.score(users).double(), self.second.score(users).double())]
        return (1 - self.w) * z[0] + self.w * z[1]


def main() -> None:
    seeds = split_seeds(__doc__)
    configure_threads(1)
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    chosen = {r["model"]: r for r in chosen_rows() if r["model"] in ("segpop", "deepcf")}
    rows = []
    for seed in seeds:
        seed_everything(seed)
        models, split = {}, None
        for name, row in chosen.items():
            cfg = load_config(["data=ml-100k", f"seed={seed}", "data.split.scheme=cold_users",
                               *FEATURE_SETS[row["user features"]]])
            split = load_split(to_container(cfg.data), seed, None)  # the same held-out users whatever the features
            models[name], _ = fitted(name, ast.literal_eval(row["hyperparameters"]), split, evaluator)
        valid = {w: evaluator.evaluate(Standardised(models["segpop"], models["deepcf"], w), split, "valid")["ndcg@10"]
                 for w in WEIGHTS}
        w = max(WEIGHTS, key=lambda weight: (valid[weight], -weight))  # ties: less of deepcf
        test = {name: evaluator.evaluate(model, split, "test")["ndcg@10"] for name, model in models.items()}
        blend = evaluator.evaluate(Standardised(models["segpop"], models["deepcf"], w), split, "test")["ndcg@10"]
        rows.append({"seed": seed, "chosen weight": w, "valid ndcg@10": round(valid[w], 4),
                     "test ndcg@10": round(blend, 4), "segpop test ndcg@10": round(test["segpop"], 4),
                     "deepcf test ndcg@10": round(test["deepcf"], 4),
                     "test minus segpop": round(blend - test["segpop"], 4), "valid by weight": valid})
        print(rows[-1], flush=True)
    gaps = [r["test minus segpop"] for r in rows]
    summary = {"seed": "mean ± 95%", "chosen weight": "",
               **{c: plus_minus(estimate([r[c] for r in rows])) for c in COLUMNS[2:]}}
    write_results(HERE / "results" / "cold_start_blend", rows, COLUMNS,
                  f"Cold users on ml-100k over split seeds {seeds}: segment popularity and deepcf "
                  "features-only (bench/cold_start.py's chosen configurations), scores standardised per user "
                  f"and mixed with deepcf's weight chosen on valid NDCG@10 from {WEIGHTS}; test for that weight; "
                  f"{sum(g > 0 for g in gaps)} of {len(gaps)} seeds above segment popularity on test",
                  shown=[*rows, summary], seeds=seeds)


if __name__ == "__main__":
    main()
