"""A self-attentive sequential recommender (SASRec, Kang & McAuley 2018) trained on every
position with a full softmax (``recsearch.models.sequential``, as the LSTM).

Token ``x_t`` enters as its item embedding, scaled by ``√dim``, plus a learned embedding of its
position in the window; ``layers`` pre-norm Transformer blocks (``heads``-head causal
self-attention and a GELU feed-forward layer of ``4 · dim``) read the sequence, so the state at
``t`` sees tokens ``x_1..x_t`` only. The next item's logits are the final state's dot products
with the item embeddings themselves (tied input and output, as in SASRec).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from recsearch.data.dataset import ServingData
from recsearch.models.base import register
from recsearch.models.sequential import PAD, NextItemRecommender, positive_integers


class SelfAttentionNet(nn.Module):
    def __init__(self, n_items: int, dim: int, heads: int, layers: int, dropout: float, max_len: int):
        super().__init__()
        self.n_items, self.scale = n_items, math.sqrt(dim)
        self.embedding = nn.Embedding(n_items + 2, dim, padding_idx=PAD)  # + padding and BOS
        self.position = nn.Embedding(max_len, dim)
        block = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.embedding.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[PAD].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """States ``(batch, time, dim)`` of right-padded tokens; causal, so a real position
        attends to real positions only and padding after it changes nothing."""
        length = tokens.shape[1]
        x = self.embedding(tokens) * self.scale + self.position.weight[:length]
        causal = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device, dtype=x.dtype)
        return self.norm(self.blocks(self.dropout(x), mask=causal, is_causal=True))

    def output(self, states: torch.Tensor) -> torch.Tensor:
        return states @ self.embedding.weight[1 : self.n_items + 1].T


@register("sasrec")
class SASRec(NextItemRecommender):
    """Next-item recommender over each user's time-ordered training history with causal
    self-attention.

    ``dim`` embedding and state size; ``heads`` attention heads (dividing ``dim``); ``layers``
    Transformer blocks; ``dropout`` on the embeddings, attention weights and inside each block;
    ``max_len`` the longest context read (training windows, scoring, and the positions learned);
    ``l2`` penalises the squared norm of the input embeddings a batch reads (mean per token).
    """

    draws_global_rng = True  # nn.Dropout and the Transformer blocks' own dropout

    def __init__(self, dim: int = 64, heads: int = 2, layers: int = 2, dropout: float = 0.3, max_len: int = 50,
                 lr: float = 1e-3, l2: float = 0.0, optimizer: str = "adam", batch_size: int = 64,
                 amp: bool = False, **common: Any):
        super().__init__(dim=dim, heads=heads, layers=layers, dropout=dropout, max_len=max_len, lr=lr, l2=l2,
                         optimizer=optimizer, batch_size=batch_size, amp=amp, **common)
        positive_integers(dim=dim, heads=heads, layers=layers)
        if dim % heads:
            raise ValueError(f"heads must divide dim, got dim={dim} and heads={heads}")

    def build_network(self, data: ServingData) -> nn.Module:
        h = self.hparams
        return SelfAttentionNet(data.n_items, int(h["dim"]), int(h["heads"]), int(h["layers"]), float(h["dropout"]),
                                self.max_len)
