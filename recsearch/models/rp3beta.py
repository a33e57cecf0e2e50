"""RP3beta (Paudel et al., "Updatable, accurate, diverse, and scalable recommendations for
interactive applications", TiiS 2017; as tuned in Dacrema et al., RecSys 2019): item-item
scores from a three-step random walk item -> user -> item on the bipartite training graph,
with popular destinations penalised.

With X the binary users x items matrix, P_ui = X row-normalised (a user's step to one of their
items) and P_iu = Xᵀ row-normalised (an item's step to one of its users), both raised
element-wise to the power ``alpha``:

    W = P_iu^α P_ui^α,   W_ij /= pop(j)^β,   diag(W) = 0,   keep each row's ``k`` largest,
    then (``normalize``) scale each row to sum 1;   score(u, ·) = X_u W.

β = 0 is the plain P³α walk; a larger β pushes the long tail. W is a dense n_items x n_items
float32 matrix (11 MB for ml-100k's 1,682 items); ``max_items`` refuses catalogues whose W
(4 · n_items² bytes, about twice that while it is built) would not fit.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recsearch.models.base import register
from recsearch.models.item_item import ItemItemRecommender


@register("rp3beta")
class RP3beta(ItemItemRecommender):
    """Ranks items by X_u W, W the popularity-penalised random-walk item similarity; a history
    H (a user unknown at training time) by X_H W the same way."""

    def __init__(self, k: int = 200, alpha: float = 1.0, beta: float = 0.5, normalize: bool = True,
                 max_items: int = 20_000, **common):
        super().__init__(k=k, alpha=alpha, beta=beta, normalize=normalize, max_items=max_items, **common)
        for name, value in (("k", k), ("max_items", max_items)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not float(alpha) > 0 or not float(beta) >= 0:  # also refuses NaN
            raise ValueError(f"alpha must be > 0 and beta >= 0, got alpha={alpha!r}, beta={beta!r}")
        self.k, self.alpha, self.beta = int(k), float(alpha), float(beta)
        self.normalize, self.max_items = bool(normalize), int(max_items)

    def prepare(self, train) -> None:
        super().prepare(train)
        if self.n_items > self.max_items:
            raise ValueError(f"RP3beta keeps a dense {self.n_items} x {self.n_items} similarity "
                             f"(about {8 * self.n_items**2 / 1e9:.1f} GB while built), above max_items="
                             f"{self.max_items}; raise max_items if the memory is there")

    def fit_prepared(self, epochs: int | None = None) -> None:
        x = self.train_data.matrix().tocsr().astype(np.float32)
        x.data[:] = 1.0  # binary: a repeated pair counts once
        walk_user = _row_normalised(x).power(self.alpha)  # P_ui^α
        walk_item = _row_normalised(x.T.tocsr()).power(self.alpha)  # P_iu^α
        weights = torch.as_tensor((walk_item @ walk_user).toarray(), device=self.device)
        popularity = torch.as_tensor(np.asarray(x.sum(axis=0)).ravel(), device=self.device)
        penalty = torch.where(popularity > 0, popularity.pow(-self.beta), torch.zeros_like(popularity))
        weights.mul_(penalty).fill_diagonal_(0.0)
        top = torch.topk(weights, min(self.k, self.n_items), dim=1)
        weights = torch.zeros_like(weights).scatter_(1, top.indices, top.values)
        if self.normalize:
            weights.div_(weights.sum(1, keepdim=True).clamp(min=1e-12))
        self.load_state({"weights": weights})


def _row_normalised(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its sum (rows without entries stay empty)."""
    sums = np.asarray(matrix.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
    return sp.diags(scale.astype(np.float32)) @ matrix
