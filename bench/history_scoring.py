"""What `/recommend/history` gains from a model that scores histories itself. Every validation
user of MovieLens 100K is served as an anonymous history (its training items, oldest first)
and ranked three ways: by the model as a known user, by the model's own history scoring (MF:
its fold-in), and by the summed item-item cosine similarity that families without history
scoring fall back to. Default configs, seed 42; the LSTM on leave-one-out. Writes
``bench/results/history_scoring.{json,md}`` (``--out``).

    .venv/bin/python bench/history_scoring.py
    .venv/bin/python bench/history_scoring.py --families mf --out bench/results/history_scoring_mf
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.base import Recommender
from recsearch.models.sequential import time_ordered
from recsearch.output import format_table
from recsearch.serving.fallback import ItemSimilarity
from recsearch.training import train_command

HERE = Path(__file__).resolve().parent
RUNS = {"ease": [], "itemknn": [], "lstm": ["data.split.scheme=loo"], "mf": []}  # family -> overrides


class ScoredAsHistories:
    """A model whose ``score(users)`` ranks each user from its training history alone, by
    ``score_histories``: what the evaluator sees when every user is an anonymous history."""

    def __init__(self, model: Recommender, histories: list[np.ndarray], score_histories):
        self.model, self.histories, self.score_histories = model, histories, score_histories
        self.n_users, self.n_items, self.device = model.n_users, model.n_items, model.device

    def score(self, users) -> torch.Tensor:
        return self.score_histories([self.histories[u] for u in torch.as_tensor(users).tolist()])


def time_ordered_histories(split) -> list[np.ndarray]:
    inter = split.train.interactions
    items, offsets = time_ordered(inter.user, inter.item, inter.timestamp, split.n_users)  # as the LSTM reads them
    return np.split(items, offsets[1:-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", choices=list(RUNS), default=list(RUNS), help="default: all")
    parser.add_argument("--out", default=str(HERE / "results" / "history_scoring"), help="results stem")
    args = parser.parse_args()
    rows = []
    for family in args.families:
        overrides = RUNS[family]
        cfg = load_config([f"model={family}", "data=ml-100k", *overrides, f"out={HERE}/results/tmp/history/{family}"])
        trained = train_command(cfg)
        model = Recommender.load(Path(cfg.out) / "model", device="cpu")
        split = load_split(to_container(cfg.data), cfg.seed, cfg.task.implicit_threshold)  # as train_command does
        evaluator = Evaluator.for_task(cfg.task)
        histories = time_ordered_histories(split)
        similarity = ItemSimilarity(split.train.matrix())
        ways = {
            "as a known user": model,
            "history, native": ScoredAsHistories(model, histories, lambda h, m=model: m.score_history(h)),
            "history, item-similarity fallback": ScoredAsHistories(
                model, histories, lambda h, s=similarity: torch.from_numpy(s.scores(h)).float()),
        }
        row = {"model": family, "split": trained["split"]}
        row.update({way: round(evaluator.evaluate(scorer, split, "valid")["ndcg@10"], 4) for way, scorer in ways.items()})
        rows.append(row)
    print(format_table(rows, list(rows[0])))
    write_results(args.out, rows, list(rows[0]),
                  "ml-100k, seed 42, valid NDCG@10 of every validation user served three ways", metric="valid ndcg@10")


if __name__ == "__main__":
    main()
