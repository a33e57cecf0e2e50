"""Ragged rows stored CSR-style (``indptr`` and a flat array): seen items per user, neighbours
per item, feature values per entity. One gather serves them all."""

from __future__ import annotations

import torch


def gather_rows(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(position in ``rows``, index into the flat array) of every entry of the given rows, row by
    row in stored order, without a Python loop: entry ``e`` of row ``r`` sits at
    ``indptr[r] + e``."""
    starts = indptr[rows]
    counts = indptr[rows + 1] - starts
    total = int(counts.sum())  # one device sync, then no output size is inferred again
    owner = torch.repeat_interleave(torch.arange(len(rows), device=rows.device), counts, output_size=total)
    shift = starts - (torch.cumsum(counts, 0) - counts)
    return owner, torch.arange(total, device=rows.device) + torch.repeat_interleave(shift, counts, output_size=total)
