"""Answers that need no personalised model: item-item cosine similarity over the training matrix
and popularity. They serve new users known only by recent items, similar-item look-ups, and
users the model has never seen."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class ItemSimilarity:
    """Cosine similarity between the item columns ``x_i`` of the binary user x item training
    matrix ``X``::

        sim(i, j) = <x_i, x_j> / (|x_i| |x_j|)

    A history ``H`` scores item ``j`` by ``sum_{h in H} sim(h, j) = x̂_j · sum_{h in H} x̂_h`` with
    ``x̂ = x / |x|``: two sparse products per batch, never the dense items x items matrix."""

    def __init__(self, matrix: sp.spmatrix):
        binary = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
        binary.data[:] = 1.0
        norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
        inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        self.normalized_t = sp.csr_matrix((binary @ sp.diags(inverse)).T)  # items x users, rows x̂_i
        self.n_items = binary.shape[1]

    def scores(self, histories: list[np.ndarray]) -> np.ndarray:
        """Summed similarity of every item to each history: float64 array (len(histories), n_items).
        A repeated history item counts once per occurrence."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        items = np.concatenate(histories).astype(np.int64) if lengths.sum() else np.empty(0, np.int64)
        columns = np.repeat(np.arange(len(histories)), lengths)
        selector = sp.csr_matrix((np.ones(len(items)), (columns, items)), shape=(len(histories), self.n_items))
        profiles = (selector @ self.normalized_t).toarray()  # batch x users: touches only history rows
        return np.ascontiguousarray((self.normalized_t @ profiles.T).T)  # sparse x dense


class PopularItems:
    """Items ranked by training interaction count, ties broken by item id."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.float64)
        self.order = np.lexsort((np.arange(len(self.counts)), -self.counts))

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular (item ids, counts)."""
        best = self.order[:k]
        return best, self.counts[best]

    def tiebreak(self) -> torch.Tensor:
        """A float64 bonus below 1e-9 that orders equal similarity scores by popularity without
        changing the order of scores that differ by more than that."""
        return torch.as_tensor(1e-9 * self.counts / (self.counts.max(initial=0.0) + 1.0))
