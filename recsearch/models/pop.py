"""Popularity: the floor every personalised model has to beat."""

from __future__ import annotations

import numpy as np
import torch

from recsearch.models.base import Recommender, register


@register("pop")
class Popularity(Recommender):
    """Ranks items by training interaction count; for ratings, predicts each item's mean rating
    shrunk towards the global mean by ``shrinkage`` pseudo-ratings."""

    tasks = ("ranking", "rating")

    def __init__(self, shrinkage: float = 10.0, **common):
        super().__init__(shrinkage=shrinkage, **common)
        self.shrinkage = float(shrinkage)
        if self.shrinkage < 0:
            raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")

    def fit_prepared(self, epochs: int | None = None) -> None:
        inter = self.train_data.interactions
        counts = np.bincount(inter.item, minlength=self.n_items).astype(np.float64)
        sums = np.bincount(inter.item, weights=inter.rating, minlength=self.n_items)
        global_mean = float(inter.rating.mean()) if len(inter) else 0.0
        means = (sums + self.shrinkage * global_mean) / np.maximum(counts + self.shrinkage, 1e-9)
        self.load_state({"counts": torch.as_tensor(counts, dtype=torch.float32),
                         "item_means": torch.as_tensor(means, dtype=torch.float32)})

    def state(self):
        return {"counts": self.counts, "item_means": self.item_means}

    def load_state(self, state):
        self.counts = state["counts"].to(self.device)
        self.item_means = state["item_means"].to(self.device)

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(len(users), -1).clone()

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.item_means[items]
