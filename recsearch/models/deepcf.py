"""Deep collaborative filtering over ids and features, for ratings (MSE) and ranking, with
a features-only path for users and items that training never saw (cold start).

Each user and item is a vector ``[p | b]`` (``dim`` factors and a bias): its id embedding
times a weight ``w``, plus the mean embedding of each of its categorical features (the
``EntityEncoder`` NCF uses with ``use_features``)::

    u = w_u e_u + Σ_f mean_{v ∈ f(u)} E_f[v]          (likewise for items)
    ŷ(u, i) = μ + b_u + b_i + p_u · q_i + h · MLP(W_p p_u + W_q q_i)

with ``μ`` the training mean rating (0 for ranking) and the MLP tower left out when ``layers``
is empty. ``w = 1`` for an entity with training interactions and 0 for one without (a held-out
user of the ``cold_users`` split, a new item): those are scored from their features alone.
Training zeroes ``w`` for a share ``user_id_dropout`` of the examples' users and, independently,
``item_id_dropout`` of their items, so the features have to carry the signal without the id (1:
that side never uses its ids, a features-only model); at 0 the features only add to the ids.
Cold users want the user side dropped, cold items the item side. ``bandwidth`` above 0 lets
neighbouring buckets of a range feature (age) share their embeddings (``EntityEncoder``).

Ratings fit ``mean (ŷ - r)²`` (``loss`` mse). Ranking fits binary cross-entropy over
``negatives`` sampled unseen items per interaction (bce, as NCF), or the softmax over the whole
catalogue, ``-log P(i | u)`` with ``P(· | u) = softmax(ŷ(u, ·))`` (softmax: for a user known by
features alone its optimum is the item distribution of the users with those features, a
generalised segment popularity). ``l2`` penalises the vectors a batch touches, ``l2 Σ ||u||² +
||v||² / batch`` (softmax: the user vectors only, every item being in every batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import (  # the annotations recsearch.schema checks the hyperparameters by
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
)
from torch import nn

from recsearch.data.dataset import Feature, ServingData
from recsearch.models.base import register
from recsearch.models.ncf import SCORE_CHUNK_ELEMENTS, EntityEncoder, features_used
from recsearch.models.torch_base import PairTrainedRecommender


class DeepCFNetwork(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, layers: list[int], user_features: list[Feature],
                 item_features: list[Feature], known_users: np.ndarray, known_items: np.ndarray, bandwidth: float):
        super().__init__()
        self.dim = dim
        self.user = EntityEncoder(n_users, dim + 1, user_features, bandwidth)
        self.item = EntityEncoder(n_items, dim + 1, item_features, bandwidth)
        self.register_buffer("mean", torch.tensor(0.0))  # the training mean rating, for task=rating
        # data, not parameters: which ids training saw, rebuilt from ServingData on restore
        self.register_buffer("known_users", torch.as_tensor(known_users, dtype=torch.float32), persistent=False)
        self.register_buffer("known_items", torch.as_tensor(known_items, dtype=torch.float32), persistent=False)
        self.tower = bool(layers)
        if self.tower:
            self.tower_user = nn.Linear(dim, layers[0])  # W [p; q] + c = (W_p p + c) + W_q q
            self.tower_item = nn.Linear(dim, layers[0], bias=False)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:], strict=True))
            self.out = nn.Linear(layers[-1], 1, bias=False)

    def users(self, ids: torch.Tensor, keep_id: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.known_users[ids] if keep_id is None else self.known_users[ids] * keep_id
        return self.user(ids, weight)

    def items(self, ids: torch.Tensor, keep_id: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.known_items[ids] if keep_id is None else self.known_items[ids] * keep_id
        return self.item(ids, weight)

    def pair(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Predictions for broadcastable user vectors ``u`` (..., dim + 1) and item vectors ``v``."""
        d = self.dim
        y = self.mean + u[..., d] + v[..., d] + (u[..., :d] * v[..., :d]).sum(-1)
        if self.tower:
            y = y + self._tower(self.tower_user(u[..., :d]) + self.tower_item(v[..., :d]))
        return y

    def against_all(self, u: torch.Tensor, keep_item_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Predictions of user vectors ``u`` (b, dim + 1) for every item: (b, n_items)."""
        d = self.dim
        v = self.items(torch.arange(self.item.ids.num_embeddings, device=u.device), keep_item_ids)
        y = torch.addmm(v[:, d], u[:, :d], v[:, :d].T) + u[:, d : d + 1] + self.mean
        if self.tower:  # the (b, n, width) first layer in chunks of users that bound memory
            user_part, item_part = self.tower_user(u[:, :d]), self.tower_item(v[:, :d])
            budget = SCORE_CHUNK_ELEMENTS.get(u.device.type, SCORE_CHUNK_ELEMENTS["cpu"])
            chunk = max(1, budget // (len(v) * user_part.shape[1]))
            for start in range(0, len(u), chunk):
                y[start : start + chunk] += self._tower(user_part[start : start + chunk, None, :] + item_part[None])
        return y

    def _tower(self, first: torch.Tensor) -> torch.Tensor:
        x = F.relu(first)
        for layer in self.hidden:
            x = F.relu(layer(x))
        return self.out(x).squeeze(-1)


@register("deepcf")
class DeepCF(PairTrainedRecommender):
    """Ids + user/item features, a dot product and an optional MLP tower; ratings or ranking."""

    tasks = ("rating", "ranking")

    def __init__(self, dim: PositiveInt = 32, layers: list[PositiveInt] = (),
                 user_id_dropout: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0,
                 item_id_dropout: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0, use_features: bool = True,
                 bandwidth: NonNegativeFloat = 0.0, loss: Literal["auto", "mse", "bce", "softmax"] = "auto",
                 negatives: PositiveInt = 4,
                 lr: PositiveFloat = 3e-3, l2: NonNegativeFloat = 0.05,
                 optimizer: Literal["adam", "adagrad", "sgd"] = "adam", batch_size: PositiveInt = 1024,
                 amp: bool = False, **common):
        if isinstance(layers, Sequence) and not isinstance(layers, str):
            layers = list(layers)  # JSON-able hparams, whatever sequence type came in
        super().__init__(dim=dim, layers=layers, user_id_dropout=user_id_dropout, item_id_dropout=item_id_dropout,
                         use_features=use_features, bandwidth=bandwidth, loss=loss, negatives=negatives, lr=lr, l2=l2,
                         optimizer=optimizer, batch_size=batch_size, amp=amp, **common)
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not (isinstance(layers, list)
                and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in layers)):
            raise ValueError(f"layers must be a list of positive integers (empty: no MLP tower), got {layers!r}")
        for name, share in (("user_id_dropout", user_id_dropout), ("item_id_dropout", item_id_dropout)):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {share}")
        if int(negatives) < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        if loss != "auto" and (self.task == "rating") != (loss == "mse"):
            raise ValueError(f"loss {loss!r} does not fit task={self.task}: ratings take mse, ranking bce or softmax")
        self.loss = loss if loss != "auto" else ("mse" if self.task == "rating" else "bce")
        self.dim, self.layers = int(dim), layers
        self.user_id_dropout, self.item_id_dropout = float(user_id_dropout), float(item_id_dropout)
        self.use_features, self.negatives, self.bandwidth = bool(use_features), int(negatives), float(bandwidth)

    @property
    def reads_features(self) -> bool:
        return self.use_features

    @property
    def feature_path(self) -> bool:  # without features a new user or item has nothing to go by
        return self.use_features

    def build_network(self, data: ServingData) -> nn.Module:
        user_features, item_features = features_used(data, self.use_features)
        known_users = np.diff(data.seen.indptr) > 0
        return DeepCFNetwork(data.n_users, data.n_items, self.dim, self.layers, user_features, item_features,
                             known_users, data.item_counts > 0, self.bandwidth)

    @property
    def samples_negatives(self) -> bool:
        return self.loss == "bce"


    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        users, items = self.users[index], self.items[index]
        if self.loss == "softmax":  # -log P(i | u) over the whole catalogue
            u = self.net.users(users, self._keep(users.shape, self.user_id_dropout))
            keep_items = self._keep(torch.Size([self.n_items]), self.item_id_dropout)
            scores = self.net.against_all(u, keep_items)
            return F.cross_entropy(scores, items) + self.l2 * u.square().sum() / len(index)
        if self.sampler is not None:  # (b, 1 + negatives), the positive first
            items = torch.cat([items[:, None], self.sampler.sample(users, self.negatives, self.generator)], 1)
        else:
            items = items[:, None]
        u = self.net.users(users, self._keep(users.shape, self.user_id_dropout))[:, None, :]
        v = self.net.items(items, self._keep(items.shape, self.item_id_dropout))
        y = self.net.pair(u, v)
        if self.sampler is None:
            loss = F.mse_loss(y[:, 0], self.ratings[index])
        else:
            labels = torch.zeros_like(y)
            labels[:, 0] = 1.0
            loss = F.binary_cross_entropy_with_logits(y, labels)
        return loss + self.l2 * (u.square().sum() + v.square().sum()) / len(index)

    def _keep(self, shape: torch.Size, dropout: float) -> torch.Tensor | None:
        """Per example, 1 to keep the id embedding, 0 (probability ``dropout``) to drop it."""
        if not dropout:
            return None
        return (torch.rand(shape, device=self.device, generator=self.generator) >= dropout).float()

    # -- inference --------------------------------------------------------------------------
    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self.net.against_all(self.net.users(users))

    def _predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.net.pair(self.net.users(users), self.net.items(items))

    def _score_user_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        return self.net.against_all(self.net.user.from_codes(codes))

    def _score_new_items(self, codes: list[list[list[int]]], user: int | None,
                         profile: list[list[int]] | None) -> torch.Tensor:
        if profile is None:
            u = self.net.users(self._check_ids([user], self.n_users, "user"))
        else:
            u = self.net.user.from_codes([profile])
        return self.net.pair(u, self.net.item.from_codes(codes))

    def _similar_to_item_codes(self, codes: list[list[list[int]]]) -> torch.Tensor:
        d = self.dim
        new = self.net.item.from_codes(codes)[:, :d]
        catalogue = self.net.items(torch.arange(self.n_items, device=self.device))[:, :d]
        return F.normalize(new, dim=1) @ F.normalize(catalogue, dim=1).T
