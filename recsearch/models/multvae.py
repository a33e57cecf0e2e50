"""Mult-VAE (Liang et al., "Variational Autoencoders for Collaborative Filtering", WWW 2018): a
user's binary item row, L2-normalised and dropped out, is encoded into a Gaussian latent code,
decoded into one logit per item, and fitted by the multinomial log-likelihood of the row with a
KL penalty whose weight β grows linearly from 0 to ``anneal_cap`` over ``anneal_steps`` steps:

    h = tanh(W_1 dropout(x / ‖x‖)),  μ, log σ² = W_μ h, W_σ h,  z = μ + σ ε (training; μ scoring)
    logits = W_3 tanh(W_2 z),  loss = -Σ_i x_i log softmax(logits)_i + β KL(N(μ, σ²) ‖ N(0, I))

``l2`` penalises the squared norm of the weight matrices (mean per user, as the loss). One epoch
is one pass over the users in batches of ``batch_size``; a user, or a raw history, is scored by
its decoded logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsearch.data.dataset import Dataset, ServingData
from recsearch.models.base import register
from recsearch.models.sequential import positive_integers
from recsearch.models.torch_base import TorchRecommender


class VariationalNet(nn.Module):
    def __init__(self, n_items: int, hidden: int, latent: int, dropout: float):
        super().__init__()
        self.encoder = nn.Linear(n_items, hidden)
        self.mean = nn.Linear(hidden, latent)
        self.log_variance = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, n_items))
        self.dropout = nn.Dropout(dropout)

    def forward(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits, μ, log σ²) of binary item rows; z is sampled while training, μ otherwise."""
        h = torch.tanh(self.encoder(self.dropout(F.normalize(rows, dim=1))))
        mean, log_variance = self.mean(h), self.log_variance(h)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance) if self.training else mean
        return self.decoder(z), mean, log_variance


@register("multvae")
class MultVAE(TorchRecommender):
    """Multinomial variational autoencoder over users' item rows.

    ``hidden`` width of the encoder's and decoder's hidden layer; ``latent`` size of the code;
    ``dropout`` on the normalised input row; ``anneal_cap`` the KL weight's final value, reached
    after ``anneal_steps`` optimiser steps."""

    scores_history = True
    draws_global_rng = True  # nn.Dropout and the reparameterisation's noise (randn_like)

    def __init__(self, hidden: int = 600, latent: int = 200, dropout: float = 0.5, anneal_cap: float = 0.2,
                 anneal_steps: int = 2000, lr: float = 1e-3, l2: float = 0.0, optimizer: str = "adam",
                 batch_size: int = 128, amp: bool = False, **common: Any):
        super().__init__(hidden=hidden, latent=latent, dropout=dropout, anneal_cap=anneal_cap,
                         anneal_steps=anneal_steps, lr=lr, l2=l2, optimizer=optimizer, batch_size=batch_size,
                         amp=amp, **common)
        positive_integers(hidden=hidden, latent=latent, anneal_steps=anneal_steps)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not float(anneal_cap) >= 0:
            raise ValueError(f"anneal_cap must be >= 0, got {anneal_cap!r}")
        self.anneal_cap, self.anneal_steps = float(anneal_cap), int(anneal_steps)

    def build_network(self, data: ServingData) -> nn.Module:
        h = self.hparams
        return VariationalNet(data.n_items, int(h["hidden"]), int(h["latent"]), float(h["dropout"]))

    def prepare(self, train: Dataset) -> None:
        super().prepare(train)
        self.steps = 0

    def n_examples(self) -> int:
        return self.n_users

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        rows = self._item_rows(index)
        logits, mean, log_variance = self.net(rows)
        likelihood = -(F.log_softmax(logits.float(), dim=1) * rows).sum(1).mean()
        kl = 0.5 * (torch.exp(log_variance) + mean.pow(2) - 1 - log_variance).float().sum(1).mean()
        beta = min(self.anneal_cap, self.anneal_cap * self.steps / self.anneal_steps)
        self.steps += 1
        loss = likelihood + beta * kl
        if self.l2:
            weights = [m.weight for m in self.net.modules() if isinstance(m, nn.Linear)]
            loss = loss + self.l2 * sum(w.pow(2).sum() for w in weights) / len(index)
        return loss

    def state(self) -> dict[str, Any]:
        return {**super().state(), "steps": self.steps}

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        self.steps = int(state["steps"])

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self.net(self._item_rows(users))[0].float()

    def _score_history(self, histories: list[np.ndarray]) -> torch.Tensor:
        return self.net(self._history_rows(histories))[0].float()
