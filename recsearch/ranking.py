"""Masking items a user has already seen, shared by ``recommend`` and the evaluator."""

from __future__ import annotations

import scipy.sparse as sp
import torch

from recsearch.ragged import gather_rows


class SeenItems:
    """A user x item CSR pattern held on the scoring device, so that masking a batch of score
    rows is two gathers and one scatter, with no Python loop over users."""

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor):
        self.indptr = indptr
        self.indices = indices

    @classmethod
    def from_matrix(cls, matrix: sp.spmatrix, device: torch.device | str = "cpu") -> SeenItems:
        csr = sp.csr_matrix(matrix)
        csr.sort_indices()
        return cls(
            torch.as_tensor(csr.indptr, dtype=torch.long, device=device),
            torch.as_tensor(csr.indices, dtype=torch.long, device=device),
        )

    def rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row position in the batch, item id) of every seen pair of the batch's users."""
        row, flat = gather_rows(self.indptr, users.to(self.indptr.device))
        return row, self.indices[flat]

    def mask(self, scores: torch.Tensor, users: torch.Tensor, value: float = float("-inf")) -> torch.Tensor:
        """Set the seen items of each row of ``scores`` (rows aligned with ``users``) to ``value``,
        in place; returns ``scores``."""
        row, item = self.rows(users)
        scores[row.to(scores.device), item.to(scores.device)] = value
        return scores

    def counts(self, users: torch.Tensor) -> torch.Tensor:
        users = users.to(self.indptr.device)
        return self.indptr[users + 1] - self.indptr[users]
