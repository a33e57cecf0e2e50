"""A recurrent sequential recommender (GRU4Rec-style, LSTM or GRU) trained on every position
(``recsearch.models.sequential``): ``h_t = RNN(E[x_1], ..., E[x_t])`` and ``output = W h_t + b``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recsearch.data.dataset import ServingData
from recsearch.models.base import register
from recsearch.models.sequential import PAD, NextItemRecommender, positive_integers

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}


class SequenceNet(nn.Module):
    """Item embedding -> dropout -> stacked LSTM/GRU -> dropout; ``output`` maps a hidden
    state to one logit per item."""

    def __init__(self, n_items: int, cell: str, dim: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(n_items + 2, dim, padding_idx=PAD)  # + padding and BOS
        self.rnn = CELLS[cell](dim, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, n_items)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(batch, time, hidden)`` of right-padded tokens; causal."""
        states, _ = self.rnn(self.dropout(self.embedding(tokens)))
        return self.dropout(states)


@register("lstm")
class SequentialRecommender(NextItemRecommender):
    """Next-item recommender over each user's time-ordered training history with a recurrent
    network.

    ``cell`` "lstm" or "gru"; ``dim`` item embedding size; ``hidden`` recurrent state size;
    ``layers`` stacked recurrent layers; ``dropout`` on embeddings, between layers and on the
    output states; ``max_len`` the longest context read (training windows and scoring);
    ``l2`` penalises the squared norm of the input embeddings a batch reads (mean per token).
    An empty history scores as the start of a sequence: on ml-100k 5 of its top 20 are
    popularity's.
    """

    draws_global_rng = True  # nn.Dropout and the recurrent layers' own dropout

    def __init__(self, cell: str = "lstm", dim: int = 64, hidden: int = 64, layers: int = 1,
                 dropout: float = 0.3, max_len: int = 50, lr: float = 3e-3, l2: float = 0.0,
                 optimizer: str = "adam", batch_size: int = 64, amp: bool = False, **common: Any):
        super().__init__(cell=cell, dim=dim, hidden=hidden, layers=layers, dropout=dropout, max_len=max_len,
                         lr=lr, l2=l2, optimizer=optimizer, batch_size=batch_size, amp=amp, **common)
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
        positive_integers(dim=dim, hidden=hidden, layers=layers)

    def build_network(self, data: ServingData) -> nn.Module:
        h = self.hparams
        return SequenceNet(data.n_items, h["cell"], int(h["dim"]), int(h["hidden"]), int(h["layers"]),
                           float(h["dropout"]))
