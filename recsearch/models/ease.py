"""EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019).

An item x item weight matrix B, learned in closed form from the binary users x items matrix X:

    minimise ‖X − X B‖² + λ ‖B‖²  subject to diag(B) = 0
    P = (XᵀX + λI)⁻¹,   B_ij = −P_ij / P_jj  (i ≠ j),   B_jj = 0

and score(u, ·) = X_u B. The solve is a dense n_items x n_items inverse: it runs in float64
(Cholesky, XᵀX + λI is symmetric positive definite for λ > 0) and peaks at about three such
matrices, 24 · n_items² bytes (0.07 GB for ml-100k's 1,682 items, 2.4 GB for 10,000); B is kept
in float32 (4 · n_items² bytes). ``max_items`` refuses larger catalogues before allocating.
"""

from __future__ import annotations

import numpy as np
import torch

from recsearch.models.base import register
from recsearch.models.item_item import ItemItemRecommender


@register("ease")
class EASE(ItemItemRecommender):
    """Ranks items by X_u B, B the closed-form item-item regression with a zero diagonal; a
    history H (a user unknown at training time) by X_H B the same way."""

    def __init__(self, l2: float = 250.0, max_items: int = 10_000, **common):
        super().__init__(l2=l2, max_items=max_items, **common)
        if not float(l2) > 0:  # also refuses NaN; λ = 0 leaves XᵀX singular for any unseen item
            raise ValueError(f"l2 (λ) must be > 0, got {l2!r}")
        if isinstance(max_items, bool) or not isinstance(max_items, (int, np.integer)) or max_items <= 0:
            raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
        self.l2, self.max_items = float(l2), int(max_items)

    def prepare(self, train) -> None:
        super().prepare(train)
        if self.n_items > self.max_items:
            gigabytes = 24 * self.n_items**2 / 1e9
            raise ValueError(
                f"EASE inverts a dense {self.n_items} x {self.n_items} matrix (about {gigabytes:.1f} GB), "
                f"above max_items={self.max_items}; raise max_items if the memory is there"
            )

    def fit_prepared(self, epochs: int | None = None) -> None:
        x = self.train_data.matrix().astype(np.float64)
        x.data[:] = 1.0  # binary: implicit feedback, a repeated pair counts once
        gram = torch.as_tensor((x.T @ x).toarray(), device=self.device)  # sparse product, dense result
        gram.diagonal().add_(self.l2)
        factor = torch.linalg.cholesky(gram)
        del gram  # at most three n_items² float64 matrices alive at once
        identity = torch.eye(self.n_items, dtype=factor.dtype, device=self.device)
        weights = torch.cholesky_solve(identity, factor)  # P = (XᵀX + λI)⁻¹
        del identity, factor
        weights.div_(-weights.diagonal().clone())  # B_ij = -P_ij / P_jj: column j over -P_jj
        weights.diagonal().zero_()
        self.load_state({"weights": weights.float()})
