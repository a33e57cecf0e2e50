"""What the closed-form item-item models share (EASE, RP3beta): an ``n_items x n_items`` weight
matrix W, learned once, that scores a user's binary training row, ``score(u, ·) = X_u W``, and
a history H (a user unknown at training time) the same way, ``X_H W``."""

from __future__ import annotations

import numpy as np
import torch

from recsearch.models.base import Recommender
from recsearch.models.compression import topk_columns


class ItemItemRecommender(Recommender):
    scores_history = True

    def state(self):
        return {"weights": self.weights}

    def pruned_state(self, top_k: int) -> dict:
        """W with only the ``top_k`` largest-magnitude weights into each item (per column, as
        ItemKNN keeps each item's nearest neighbours), stored sparse."""
        return {"weights": topk_columns(self.weights.cpu(), top_k)}

    def load_state(self, state):
        weights = state["weights"].to(self.device, torch.float32)
        if weights.shape != (self.n_items, self.n_items):
            raise ValueError(f"state holds {tuple(weights.shape)} weights, the data has {self.n_items} items")
        self.weights = weights

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self._item_rows(users) @ self.weights

    def _score_history(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self._history_rows(histories) @ self.weights
