"""Neural collaborative filtering (He et al., 2017): GMF, MLP and their fusion NeuMF.

With user and item vectors p_u, q_i (separate halves for the GMF and MLP towers in NeuMF):

    GMF     φ_g = p_u ⊙ q_i
    MLP     φ_m = a_L(W_L ... a_1(W_1 [p_u; q_i] + b_1) ...),   a = ReLU (then dropout)
    NeuMF   ŷ(u, i) = σ(h · [φ_g; φ_m] + b)     (GMF alone: h · φ_g, MLP alone: h · φ_m)

fitted with binary cross-entropy: each training interaction is a positive (y = 1), with
``negatives`` uniformly sampled unseen items as negatives (y = 0); ``l2`` penalises
Σ ||p_u||² + ||q_j||² / batch over the vectors a batch touches. ``batch_size`` counts training
interactions, so a step sees batch_size x (1 + negatives) pairs. Ranking only: the output is an
interaction probability, not a rating; ``score`` returns the logits (same order, no sigmoid).

``W_1 [p; q] = W_p p + W_q q`` is computed per tower, so the user half is projected once per
user, not once per (user, item) pair: scoring b users against the catalogue projects b users
and n items, then runs the remaining layers over (b, n) pairs, a user at a time on the CPU in
fp32 (shared among torch's threads), else in chunks of users that bound memory. GMF's part of
the score is one matrix product.

With ``use_features`` each vector is its id embedding plus, for every categorical feature of
the entity (``Dataset.user_features`` / ``item_features``), the mean embedding of its values
(``nn.EmbeddingBag(mode="mean")``; multi-valued features such as genres average their
values). Users and items with few interactions then borrow from others that share their
features instead of being scored from an untrained id embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsearch.data.dataset import Feature, ServingData, range_closeness
from recsearch.models import kernels
from recsearch.models.base import register
from recsearch.models.torch_base import PairTrainedRecommender
from recsearch.ragged import gather_rows

VARIANTS = ("gmf", "mlp", "neumf")
INIT_STD = 0.01
# (users x items x first layer) fp32 activations per scoring chunk (as many bytes in bf16):
# about the L2 cache on a CPU, large enough on a GPU that a chunk keeps it busy
SCORE_CHUNK_ELEMENTS = {"cpu": 1 << 20, "cuda": 1 << 26}


class EntityEncoder(nn.Module):
    """Vectors for ids: an id embedding plus the mean embedding of each categorical feature.
    With ``bandwidth`` above 0, a feature of ranges (age buckets, ``Feature.positions``) embeds
    each bucket as the mean of every bucket's embedding weighted exp(-(d / bandwidth)^2 / 2), d
    buckets apart: a small bucket learns from its neighbours (``segpop``'s smoothing, learned)."""

    def __init__(self, n: int, width: int, features: list[Feature], bandwidth: float = 0.0):
        super().__init__()
        # Always sparse, so lazy Adam: dense Adam at ml-100k's size (see torch_base.embedding) ran
        # 10% faster per epoch but ended lower (default NeuMF valid NDCG@10 0.2263 against 0.2289)
        self.ids = nn.Embedding(n, width, sparse=True)
        nn.init.normal_(self.ids.weight, std=INIT_STD)
        self.bags = nn.ModuleList()
        self.single_valued: list[bool] = []
        for index, feature in enumerate(features):
            positions = feature.positions() if bandwidth > 0 else None
            # a mixed bag's every row has a gradient each step: dense
            bag = nn.EmbeddingBag(len(feature.vocabulary), width, mode="mean", sparse=positions is None)
            nn.init.normal_(bag.weight, std=INIT_STD)
            self.bags.append(bag)
            self.single_valued.append(bool(np.all(np.diff(feature.offsets) == 1)))
            # data, not parameters: rebuilt from the dataset by prepare(), so not saved
            self.register_buffer(f"offsets{index}", torch.as_tensor(feature.offsets), persistent=False)
            self.register_buffer(f"values{index}", torch.as_tensor(feature.values), persistent=False)
            self.register_buffer(f"mix{index}", None if positions is None else neighbour_mix(positions, bandwidth),
                                 persistent=False)

    def forward(self, ids: torch.Tensor, id_weight: torch.Tensor | None = None) -> torch.Tensor:
        """``id_weight`` (shaped like ``ids``) scales each id embedding: 0 embeds an entity from
        its features alone (``deepcf``'s cold entities and id dropout)."""
        flat = ids.reshape(-1)
        out = self.ids(flat)
        if id_weight is not None:
            out = out * id_weight.reshape(-1, 1).to(out.dtype)
        for index in range(len(self.bags)):
            out = out + self._bag(index, *self._bag_input(index, flat))
        return out.reshape(*ids.shape, -1)

    def from_codes(self, entities: list[list[list[int]]]) -> torch.Tensor:
        """Vectors of entities described only by feature codes (``entities[e][f]``: the codes of
        entity ``e``'s feature ``f``, as ``dataset.encode_entity`` gives them): no id part."""
        device = self.ids.weight.device
        out = torch.zeros(len(entities), self.ids.embedding_dim, device=device)
        for index in range(len(self.bags)):
            codes = [entity[index] for entity in entities]
            lengths = torch.tensor([0] + [len(c) for c in codes[:-1]], device=device)
            values = torch.tensor([code for c in codes for code in c], dtype=torch.long, device=device)
            out = out + self._bag(index, values, torch.cumsum(lengths, 0))
        return out

    def _bag(self, index: int, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        bag, mix = self.bags[index], getattr(self, f"mix{index}")
        weight = bag.weight if mix is None else mix @ bag.weight
        return F.embedding_bag(values, weight, offsets, mode="mean", sparse=bag.sparse)

    def _bag_input(self, index: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(flat value codes, start of each id's bag) for ``nn.EmbeddingBag``, without a loop."""
        offsets, values = getattr(self, f"offsets{index}"), getattr(self, f"values{index}")
        if self.single_valued[index]:
            return values[offsets[ids]], torch.arange(len(ids), device=ids.device)
        lengths = offsets[ids + 1] - offsets[ids]
        return values[gather_rows(offsets, ids)[1]], torch.cumsum(lengths, 0) - lengths


class NeuMFNetwork(nn.Module):
    def __init__(self, n_users: int, n_items: int, variant: str, dim: int, layers: list[int],
                 dropout: float, user_features: list[Feature], item_features: list[Feature]):
        super().__init__()
        self.dim, self.dropout = dim, dropout
        self.gmf, self.mlp = variant in ("gmf", "neumf"), variant in ("mlp", "neumf")
        width = dim * (self.gmf + self.mlp)  # NeuMF: [GMF half | MLP half]
        self.user = EntityEncoder(n_users, width, user_features)
        self.item = EntityEncoder(n_items, width, item_features)
        if self.mlp:
            self.mlp_user = nn.Linear(dim, layers[0])  # W_1 [p; q] + b_1 = (W_p p + b_1) + W_q q
            self.mlp_item = nn.Linear(dim, layers[0], bias=False)
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(layers[:-1], layers[1:], strict=True))
        self.out = nn.Linear(dim * self.gmf + layers[-1] * self.mlp, 1)

    def pair_logits(self, users: torch.Tensor, items: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Logits of users (b,) against items (b, m): shape (b, m); also the vectors used."""
        p, q = self.user(users)[:, None, :], self.item(items)
        # the [GMF | MLP] halves by split, whose backward is one concatenation, where slicing's
        # is a zero-filled full-width gradient per slice
        p_halves, q_halves = p.split(self.dim, -1), q.split(self.dim, -1)
        h, logits = self.out.weight[0], self.out.bias
        if self.gmf:
            logits = logits + (p_halves[0] * q_halves[0]) @ h[: self.dim]
        if self.mlp:
            first = self.mlp_user(p_halves[-1]) + self.mlp_item(q_halves[-1])
            logits = logits + self._tower(first, generator) @ h[-self.hidden_width :]
        return logits, (p, q)

    def all_logits(self, users: torch.Tensor) -> torch.Tensor:
        """Logits of users (b,) against every item: shape (b, n_items)."""
        p, q = self.user(users), self.item(torch.arange(self.item.ids.num_embeddings, device=users.device))
        h = self.out.weight[0]
        logits = self.out.bias.expand(len(users), len(q)).clone()
        if self.gmf:
            logits += (p[:, : self.dim] * h[: self.dim]) @ q[:, : self.dim].T
        if self.mlp:
            # On the CPU the compiled tower (``kernels.tower_logits_``), in bf16 under autocast (amp)
            # where MKL's bf16 product is found. Elsewhere the tower runs in its precision from end
            # to end, outside autocast: the halves are cast once, not every chunk's (b, n, width)
            # sum, which autocast would make in fp32 and cast again at the next layer (ml-100k bf16
            # validation, bench/perf.py: 0.13-0.15 s against 0.18-0.22 s). Chunks of the same bytes
            # whatever the precision.
            device = users.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
            with torch.autocast(device, enabled=False):
                user_part, item_part = self.mlp_user(p[:, -self.dim :]), self.mlp_item(q[:, -self.dim :])
                head = h[-self.hidden_width :]
                if (device == "cpu" and not (self.training or torch.is_grad_enabled())
                        and (dtype == torch.float32 or (dtype == torch.bfloat16 and kernels.MKL_BF16_GEMM))):
                    layers = [(layer.weight.detach(), layer.bias.detach()) for layer in self.hidden]
                    kernels.tower_logits_(logits, user_part, item_part, layers, head.detach(),
                                          bf16=dtype == torch.bfloat16)
                    return logits
                user_part, item_part, head = (t.to(dtype) for t in (user_part, item_part, head))
                budget = SCORE_CHUNK_ELEMENTS.get(device, SCORE_CHUNK_ELEMENTS["cpu"]) * 4 // dtype.itemsize
                chunk = max(1, budget // (len(q) * user_part.shape[1]))
                for start in range(0, len(users), chunk):
                    first = user_part[start : start + chunk, None, :] + item_part[None]
                    logits[start : start + chunk] += self._tower(first) @ head
        return logits

    def pair_gradient(self, users: torch.Tensor, candidates: torch.Tensor, l2: float,
                      generator: torch.Generator | None = None, bf16: bool = False) -> torch.Tensor:
        """What autograd of ``NeuralCF.batch_loss`` does (BCE of ``pair_logits``, the positive
        first in each row of ``candidates``, plus ``l2``), by hand on the CPU: sets every
        parameter's gradient (the id tables' sparse, as their ``sparse=True`` backward gives) and
        returns the loss, with the same dropout draws in the same order. The matrix products are
        torch's; the passes between them are compiled loops that each read the activations once
        (``kernels``), where autograd's graph of the same step makes several torch passes over
        them. Without feature bags (``use_features=False``).

        ``bf16`` (``amp``): the tower's activations over the pairs, their gradients and the
        products between them in bfloat16, as under bf16 autocast; the passes compute in float32
        and round what they store once. The parameters, their gradients and the products over the
        distinct entities stay float32 (in bf16 those took longer: their shapes change with every
        batch, and oneDNN builds a kernel per shape). On a CPU with AMX the pairs' products take a
        third of float32's time (README "Performance")."""
        b, m = candidates.shape
        d, rate = self.dim, self.dropout if self.training else 0.0
        # each user and item once: the first layer's halves, the output layer's GMF products and
        # the tables' gradients over the batch's distinct entities (ml-100k's default NeuMF: about
        # 670 users of 2,048 rows and 1,430 items of 4,096 pairs), gathered and summed by index;
        # pair r is user user_ids[user_of[r // m]] and item item_ids[item_of[r]]
        (user_ids, user_of, user_counts), (item_ids, item_of, item_counts) = (
            kernels.distinct(ids, encoder.ids.num_embeddings)
            for ids, encoder in ((users, self.user), (candidates.reshape(-1), self.item)))
        # each half gathered on its own, contiguous: [GMF | MLP] halves as the tables hold them
        user_halves = [half.index_select(0, user_ids) for half in self.user.ids.weight.detach().split(d, 1)]
        item_halves = [half.index_select(0, item_ids) for half in self.item.ids.weight.detach().split(d, 1)]
        activations = []  # each layer's output, the next one's input
        if self.mlp:
            precision = torch.bfloat16 if bf16 else item_halves[-1].dtype
            x = torch.empty(b * m, self.mlp_item.out_features, dtype=precision)
            kernels.first_layer_(x, F.linear(item_halves[-1], self.mlp_item.weight), item_of,
                                 F.linear(user_halves[-1], self.mlp_user.weight, self.mlp_user.bias), user_of,
                                 self._dropout_keys(generator), rate)
            activations.append(x)
            tower_weights = [layer.weight.detach().to(precision) for layer in self.hidden]
            for layer, weight in zip(self.hidden, tower_weights, strict=True):
                x = F.linear(x, weight, layer.bias.detach().to(precision))
                kernels.relu_dropout_(x, self._dropout_keys(generator), rate)
                activations.append(x)
        gmf = (user_halves[0], item_halves[0]) if self.gmf else None
        loss, self.out.weight.grad, self.out.bias.grad, grad, grad_sum, *gmf_grads = kernels.bce_head(
            activations[-1] if self.mlp else None, gmf, user_of, item_of, self.out.weight, self.out.bias, rate)
        user_grads, item_grads = ([grad] for grad in gmf_grads) if self.gmf else ([], [])
        if self.mlp:
            # grad: a layer's pre-activations' gradient (bce_head or relu_backward_ undid the ReLU
            # after it); its sum over the pairs is the layer's bias gradient (the last layer's
            # summed by bce_head as it stored them)
            for layer, weight, inputs in zip(reversed(self.hidden), reversed(tower_weights), activations[-2::-1],
                                             strict=True):
                layer.weight.grad = kernels.weight_gradient(grad, inputs) if bf16 else grad.T @ inputs
                layer.bias.grad = grad.sum(0, dtype=layer.bias.dtype) if grad_sum is None else grad_sum
                grad, grad_sum = grad @ weight, None
                kernels.relu_backward_(grad, inputs, rate)
            item_grad, user_grad = kernels.sum_by_entity(grad, item_of, user_of, len(item_ids), len(user_ids))
            self.mlp_item.weight.grad = item_grad.T @ item_halves[-1]
            item_grads.append(item_grad @ self.mlp_item.weight)
            self.mlp_user.weight.grad, self.mlp_user.bias.grad = user_grad.T @ user_halves[-1], user_grad.sum(0)
            user_grads.append(user_grad @ self.mlp_user.weight)
        if l2:  # over the batch's rows: an entity's vector counts as often as it occurs
            for grads, halves, counts in ((user_grads, user_halves, user_counts), (item_grads, item_halves, item_counts)):
                weights = counts.to(halves[0].dtype)[:, None]
                for grad, half in zip(grads, halves, strict=True):
                    loss = loss + l2 * (weights * half.square()).sum() / b
                    grad.add_(weights * half, alpha=2 * l2 / b)
        for encoder, ids, grads in ((self.user, user_ids, user_grads), (self.item, item_ids, item_grads)):
            encoder.ids.weight.grad = torch.sparse_coo_tensor(ids[None], torch.cat(grads, 1), encoder.ids.weight.shape)
        return loss

    def _dropout_keys(self, generator: torch.Generator | None, device: torch.device | str = "cpu"
                      ) -> torch.Tensor | None:
        """A layer's dropout keys for this step (``kernels.dropout_keys``), None where nothing drops."""
        if not self.training or self.dropout == 0:
            return None
        return kernels.dropout_keys(generator, device)

    @property
    def hidden_width(self) -> int:
        return self.hidden[-1].out_features if len(self.hidden) else self.mlp_item.out_features

    def _tower(self, first: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        # in place: neither the sum nor a linear layer needs its output for the backward pass;
        # the layers in the input's precision (``all_logits`` runs them in bf16 outside autocast)
        x = self._drop(F.relu_(first), generator)
        for layer in self.hidden:
            x = self._drop(F.relu_(F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))), generator)
        return x

    def _drop(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Inverted dropout keyed from the model's generator (``nn.Dropout`` uses the global RNG,
        which would make a resumed run differ from an uninterrupted one), its draws hashed from
        the keys (``kernels.hashed_uniform``): the hand-written step's compiled passes drop the same."""
        keys = self._dropout_keys(generator, x.device)
        return x if keys is None else x * (kernels.hashed_uniform(x.shape, keys) >= self.dropout) / (1 - self.dropout)


def neighbour_mix(positions: np.ndarray, bandwidth: float) -> torch.Tensor:
    """Row v: the weights of every bucket in bucket v's vector, exp(-(d / bandwidth)^2 / 2) d
    buckets apart, summing to 1 (``positions``: ``Feature.positions``); unknown (NaN) is itself."""
    codes = np.arange(len(positions))
    weights = np.nan_to_num(range_closeness(positions, codes[:, None], codes[None, :], bandwidth))
    weights[np.isnan(positions), np.isnan(positions)] = 1.0
    return torch.as_tensor(weights / weights.sum(1, keepdims=True), dtype=torch.float32)


def features_used(data: ServingData, use_features: bool) -> tuple[list[Feature], list[Feature]]:
    """The user and item features a model built with ``use_features`` reads (none without)."""
    if not use_features:
        return [], []
    if not (data.user_features or data.item_features):
        raise ValueError(f"use_features=True but dataset {data.name!r} has no user or item features")
    return list(data.user_features.values()), list(data.item_features.values())


@register("ncf")
class NeuralCF(PairTrainedRecommender):
    """GMF, MLP or NeuMF (``variant``) trained with BCE over sampled negatives."""

    tasks = ("ranking",)

    def __init__(self, variant: str = "neumf", dim: int = 32, layers: list[int] = (32, 16, 8),
                 dropout: float = 0.0, negatives: int = 4, use_features: bool = False, lr: float = 1e-3,
                 l2: float = 0.0, optimizer: str = "adam", batch_size: int = 2048, amp: bool = False, **common):
        if isinstance(layers, Sequence) and not isinstance(layers, str):
            layers = list(layers)  # JSON-able hparams, whatever sequence type came in
        super().__init__(variant=variant, dim=dim, layers=layers, dropout=dropout, negatives=negatives,
                         use_features=use_features, lr=lr, l2=l2, optimizer=optimizer,
                         batch_size=batch_size, amp=amp, **common)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if not (isinstance(layers, list) and layers
                and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in layers)):
            raise ValueError(f"layers must be a non-empty list of positive integers, got {layers!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if int(negatives) < 1:
            raise ValueError(f"negatives must be >= 1, got {negatives}")
        self.variant, self.dim, self.layers = variant, int(dim), layers
        self.dropout, self.negatives, self.use_features = float(dropout), int(negatives), bool(use_features)

    @property
    def reads_features(self) -> bool:
        return self.use_features

    def build_network(self, data: ServingData) -> nn.Module:
        user_features, item_features = features_used(data, self.use_features)
        return NeuMFNetwork(data.n_users, data.n_items, self.variant, self.dim, self.layers, self.dropout,
                            user_features, item_features)

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        users, candidates = self._batch(index)
        logits, (p, q) = self.net.pair_logits(users, candidates, self.generator)
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        if self.l2:
            loss = loss + self.l2 * (p.square().sum() + q.square().sum()) / len(index)
        return loss

    def backward(self, index: torch.Tensor) -> torch.Tensor:
        """``NeuMFNetwork.pair_gradient`` where it applies (on the CPU, without feature bags;
        in bf16 under ``amp``), else autograd."""
        if self.use_features or self.device.type != "cpu":
            return super().backward(index)
        with torch.no_grad():
            return self.net.pair_gradient(*self._batch(index), self.l2, self.generator, bf16=self.amp)

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users of the examples ``index`` and their candidates (b, 1 + negatives), the positive first."""
        users = self.users.index_select(0, index)  # not users[index]: 3% of an ml-100k NeuMF epoch
        negatives = self.sampler.sample(users, self.negatives, self.generator)
        return users, torch.cat([self.items.index_select(0, index)[:, None], negatives], 1)

    def _score(self, users: torch.Tensor) -> torch.Tensor:
        return self.net.all_logits(users).float()
