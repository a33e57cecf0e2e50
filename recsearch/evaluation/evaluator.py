"""Full-ranking and rating evaluation of a model on the validation or test part of a split.

Ranking: every user with at least one target in the part is scored against the whole
catalogue (no sampled negatives). The user's training items are masked, and for the test part
the validation items too, so a model is never credited for an item it was shown; a held-out
item that is also masked is therefore not a target. A split that names the ``candidates`` of
a part (``cold_items``) ranks only those items. Users left without a target are skipped;
``last_counts`` says how many were evaluated. Rating: the model predicts every (user, item)
pair of the part.

Every model scores the validation part from its training state. The test part too, except a
model whose state is each user's time-ordered sequence (``Recommender.reads_sequence``: the
LSTM and SASRec families): it scores each test user from the training and validation items,
merged in time order (``model.score_history``), so that on leave-one-out it predicts the item
after the validation item, not two steps ahead, as SASRec's paper and RecBole's sequential
evaluation do. The other families, like RecBole's general models, score it from their training
state. Masks and targets are the same either way.

Masks and targets depend only on the split, so they are built once per (split, part, device),
those histories once per split, and reused across epochs; a split is treated as immutable once
evaluated.
"""

from __future__ import annotations

import numbers
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from recsearch.data.dataset import Split
from recsearch.errors import ConfigError
from recsearch.evaluation.metrics import (
    RankedLists,
    check_request,
    compute_ranking,
    ranked_items,
    rating_metrics,
)
from recsearch.models.base import Recommender
from recsearch.models.sequential import time_ordered
from recsearch.ranking import SeenItems

PARTS = ("valid", "test")
PAIRS_PER_USER = 64  # rating batches hold batch_size * 64 pairs: a pair costs far less than a score row


@dataclass
class _RankingPart:
    users: torch.Tensor  # evaluated users (at least one target), ascending
    masked: SeenItems  # training items (+ validation items for the test part)
    targets: SeenItems  # held-out items minus masked ones, sorted per user
    excluded: torch.Tensor | None  # bool per item: never ranked (cold_items: all but the part's held-out items)


@dataclass
class _RatingPart:
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor


class Evaluator:
    """Evaluates ``metrics`` (base names such as ``ndcg``; ranking ones at every cutoff in
    ``ks``) of a model on a split's part, scoring ``batch_size`` users at a time.

    ``evaluate`` returns ``{"ndcg@10": ..., ...}`` (ranking) or ``{"rmse": ..., "mae": ...}``
    (rating) and leaves ``last_counts``: ``{"users", "targets"}`` evaluated (ranking) or
    ``{"pairs"}`` (rating).
    """

    def __init__(self, task: str, metrics: Iterable[str], ks: Iterable[int] = (), batch_size: int = 1024):
        self.metrics, self.ks = check_request(task, metrics, ks)
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"evaluation batch_size must be a positive integer, got {batch_size!r}")
        self.task = task
        self.batch_size = int(batch_size)
        self.last_counts: dict[str, int] = {}
        self._split: weakref.ref | None = None
        self._parts: dict[tuple[str, str], Any] = {}

    @classmethod
    def for_task(cls, task_cfg: Mapping[str, Any], batch_size: int = 1024) -> Evaluator:
        """From a task config such as ``conf/task/ranking.yaml`` (keys ``name``, ``metrics``, ``ks``)."""
        missing = [key for key in ("name", "metrics") if key not in task_cfg]
        if missing:
            raise ConfigError(f"task config lacks {', '.join(missing)}")
        return cls(task_cfg["name"], task_cfg["metrics"], task_cfg.get("ks") or [], batch_size)

    @property
    def names(self) -> list[str]:
        """The keys ``evaluate`` returns, e.g. to check a selection metric before a sweep."""
        if self.task == "rating":
            return list(self.metrics)
        return [f"{name}@{k}" for name in self.metrics for k in self.ks]

    def evaluate(self, model: Recommender, split: Split, part: str) -> dict[str, float]:
        """The metrics of ``model`` (prepared on ``split.train``) on ``part``: "valid" or "test"."""
        if part not in PARTS:
            raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
        if model.n_items != split.n_items or model.n_users != split.n_users:
            raise ValueError(f"the model knows {model.n_users} users x {model.n_items} items, "
                             f"the split has {split.n_users} x {split.n_items}")
        data = self._part(split, part, model.device)
        if self.task == "rating":
            return self._rate(model, data)
        if part == "test" and model.reads_sequence:  # scored from what precedes the test items
            histories = self._cached(split, ("test", "histories"),
                                     lambda: histories_before_test(split, data.users.cpu().numpy()))
            return self._rank(data, split.n_items, lambda users, start: model.score_history(
                histories[start : start + len(users)]), f"{type(model).__name__}.score_history")
        return self._rank(data, split.n_items, lambda users, start: model.score(users),
                          f"{type(model).__name__}.score")

    def evaluate_scores(self, scores: torch.Tensor, split: Split, part: str) -> dict[str, float]:
        """Ranking metrics of fixed ``scores`` (``(n_users, n_items)``, every user's row) on
        ``part``, masked and cut as ``evaluate`` does a model's: for comparing many blends of
        scores already computed (``recsearch.tuning.blending``)."""
        if self.task != "ranking" or part not in PARTS:
            raise ValueError(f"evaluate_scores ranks the valid or test part, not {self.task} {part!r}")
        if scores.shape != (split.n_users, split.n_items):
            raise ValueError(f"scores of shape {tuple(scores.shape)}, the split has {split.n_users} x {split.n_items}")
        data = self._part(split, part, scores.device)
        return self._rank(data, split.n_items, lambda users, start: scores[users], "scores")

    # -- ranking ------------------------------------------------------------------------------
    def _rank(self, data: _RankingPart, n_items: int, score: Callable[[torch.Tensor, int], torch.Tensor],
              what: str) -> dict[str, float]:
        """``score(users, start)``: a fresh score tensor for the batch of evaluated users that
        begins at position ``start``; ``what`` names it in errors."""
        k = max(self.ks)
        items, hits, n_targets = [], [], []
        for start in range(0, len(data.users), self.batch_size):
            users = data.users[start : start + self.batch_size]
            scores = score(users, start)
            if scores.shape != (len(users), n_items):
                raise ValueError(f"{what} returned shape {tuple(scores.shape)}, expected {(len(users), n_items)}")
            data.masked.mask(scores, users)  # in place: the score tensor is fresh
            if data.excluded is not None:
                scores[:, data.excluded] = float("-inf")
            top = ranked_items(scores, k)
            items.append(top)
            hits.append(_is_target(data.targets, users, top, n_items))
            n_targets.append(data.targets.counts(users).to(top.device))
        top = RankedLists(torch.cat(items), torch.cat(hits), torch.cat(n_targets), n_items)
        self.last_counts = {"users": len(data.users), "targets": int(top.n_targets.sum())}
        return compute_ranking(top, self.metrics, self.ks)

    # -- rating -------------------------------------------------------------------------------
    def _rate(self, model: Recommender, data: _RatingPart) -> dict[str, float]:
        step = self.batch_size * PAIRS_PER_USER
        predicted = torch.cat([
            model.predict(data.users[start : start + step], data.items[start : start + step]).reshape(-1)
            for start in range(0, len(data.users), step)
        ])
        self.last_counts = {"pairs": len(data.users)}
        return rating_metrics(predicted, data.ratings.to(predicted.device), self.metrics)

    # -- per-split cache ----------------------------------------------------------------------
    def _part(self, split: Split, part: str, device: torch.device) -> _RankingPart | _RatingPart:
        build = _rating_part if self.task == "rating" else _ranking_part
        return self._cached(split, (part, str(device)), lambda: build(split, part, device))

    def _cached(self, split: Split, key: tuple[str, str], build: Callable[[], Any]) -> Any:
        if self._split is None or self._split() is not split:  # a weakref: a dead split's id may be reused
            self._split, self._parts = weakref.ref(split), {}
        if key not in self._parts:
            self._parts[key] = build()
        return self._parts[key]

    def __getstate__(self) -> dict[str, Any]:
        """Pickles (into Ray workers) without the cache: a weakref cannot travel."""
        return {**self.__dict__, "_split": None, "_parts": {}}


def _ranking_part(split: Split, part: str, device: torch.device) -> _RankingPart:
    shape = (split.n_users, split.n_items)
    masked = split.train.matrix()
    if part == "test":
        masked = masked + split.valid.matrix(*shape)
    targets = (getattr(split, part).matrix(*shape) > 0) > (masked > 0)  # held out and not masked
    users = np.flatnonzero(np.diff(targets.indptr))
    if len(users) == 0:
        raise ValueError(f"no user has a {part} item outside the masked ones: nothing to evaluate")
    excluded = None
    if part in split.candidates:
        excluded = torch.ones(split.n_items, dtype=torch.bool, device=device)
        excluded[torch.as_tensor(split.candidates[part], dtype=torch.long, device=device)] = False
    return _RankingPart(
        torch.as_tensor(users, dtype=torch.long, device=device),
        SeenItems.from_matrix(masked, device),
        SeenItems.from_matrix(sp.csr_matrix(targets), device),
        excluded,
    )


def histories_before_test(split: Split, users: np.ndarray) -> list[np.ndarray]:
    """Each of ``users``' training and validation items, merged in time order (ties: training
    first, then original order): on leave-one-out, all the user had done before its test item."""
    parts = (split.train.interactions, split.valid)
    items, offsets = time_ordered(*(np.concatenate([getattr(p, name) for p in parts])
                                    for name in ("user", "item", "timestamp")), split.n_users)
    return [items[offsets[user] : offsets[user + 1]] for user in users]


def _rating_part(split: Split, part: str, device: torch.device) -> _RatingPart:
    pairs = getattr(split, part)
    if len(pairs) == 0:
        raise ValueError(f"the {part} part is empty: nothing to evaluate")
    return _RatingPart(*(torch.as_tensor(a, device=device) for a in (pairs.user, pairs.item, pairs.rating)))


def _is_target(targets: SeenItems, users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """(batch, k) bool: ``items[b, r]`` is a target of ``users[b]``. Binary search of the
    batch's (row, item) pairs, encoded as ``row * n_items + item`` (sorted, since the CSR rows
    are), so no dense (batch, n_items) matrix is built."""
    row, item = targets.rows(users)
    pairs = (row * n_items + item).to(items.device)
    wanted = (torch.arange(len(users), device=items.device)[:, None] * n_items + items.clamp(min=0)).reshape(-1)
    found = torch.searchsorted(pairs, wanted).clamp(max=len(pairs) - 1)
    return (pairs[found] == wanted).view_as(items) & (items >= 0)
