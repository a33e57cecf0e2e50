"""Evaluation metrics: one registry of small units, one definition each (RecBole style).

Ranking metrics use binary relevance. For one evaluated user, ``T`` is the number of target
items (held-out items of the part that were not masked), ``K`` the cutoff and
``rel_r`` in {0, 1} says whether the item at rank ``r`` (1-based) is a target. Each @K metric
is the mean over evaluated users, except coverage, which is a property of the whole set of
lists. Rating metrics compare predicted ratings ``ŷ_i`` with true ratings ``y_i`` over all
held-out pairs ``i = 1..N``.

Ties: ``ranked_items`` breaks equal scores in favour of the lower item id, so results are the
same on every run and device (``torch.topk`` alone leaves that order unspecified).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recsearch.errors import ConfigError

TASKS = ("ranking", "rating")
VALID_PREFIX = "valid/"  # training reports validation metrics as valid/<metric>
TEST_PREFIX = "test/"  # a sweep's re-evaluation trials report their test metrics as test/<metric>


@dataclass(frozen=True)
class RankedLists:
    """The ranked lists of the evaluated users: everything a ranking metric needs."""

    items: torch.Tensor  # (users, K_max) long: the item at rank r in column r - 1; -1 = no item
    hits: torch.Tensor  # (users, K_max) bool: that item is one of the user's targets
    n_targets: torch.Tensor  # (users,) long, T >= 1 for every row
    n_items: int  # catalogue size, for coverage


@dataclass(frozen=True)
class Metric:
    name: str
    task: str  # "ranking": compute(top: RankedLists, k) ; "rating": compute(predicted, truth)
    compute: Callable[..., torch.Tensor]  # returns a 0-d tensor
    higher_is_better: bool

    @property
    def mode(self) -> str:
        """Tune's and early stopping's word for the direction: "max" or "min"."""
        return "max" if self.higher_is_better else "min"


METRICS: dict[str, Metric] = {}


def _register(name: str, task: str, higher_is_better: bool = True):
    def add(compute: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        METRICS[name] = Metric(name, task, compute, higher_is_better)
        return compute

    return add


def metric_of(name: str) -> Metric:
    """The registry entry of an evaluated name such as ``ndcg@10`` or ``rmse``."""
    base = name.split("@", 1)[0]
    if base not in METRICS:
        raise ConfigError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return METRICS[base]


def metric_mode(name: str) -> str:
    """"max" for metrics where higher is better (NDCG@10), "min" for errors (RMSE)."""
    return metric_of(name).mode


def valid_key(metric: str) -> str:
    """The name under which training reports a validation metric: ``valid/ndcg@10``."""
    return f"{VALID_PREFIX}{metric}"


def valid_metrics(row: dict) -> dict[str, float]:
    """The validation metrics of a reported row, without their prefix."""
    return {k.removeprefix(VALID_PREFIX): v for k, v in row.items() if k.startswith(VALID_PREFIX)}


def reported_test(row: dict) -> dict[str, float]:
    """The test metrics of a reported row (a re-evaluation trial's last), without their prefix."""
    return {k.removeprefix(TEST_PREFIX): v for k, v in row.items() if k.startswith(TEST_PREFIX)}



# -- ranking -----------------------------------------------------------------------------------
@_register("hit", "ranking")
def hit_rate(top: RankedLists, k: int) -> torch.Tensor:
    """Hit@K = 1 if any of the top K items is a target, else 0."""
    return top.hits[:, :k].any(1).double().mean()


@_register("precision", "ranking")
def precision(top: RankedLists, k: int) -> torch.Tensor:
    """Precision@K = (sum_{r<=K} rel_r) / K, with the K asked for even when fewer items could
    be ranked (a catalogue shorter than K)."""
    return (top.hits[:, :k].sum(1).double() / k).mean()


@_register("recall", "ranking")
def recall(top: RankedLists, k: int) -> torch.Tensor:
    """Recall@K = (sum_{r<=K} rel_r) / T. RecBole's definition: the denominator is T, not
    min(T, K), so a user with more than K targets cannot reach 1."""
    return (top.hits[:, :k].sum(1).double() / top.n_targets).mean()


@_register("f1", "ranking")
def f1(top: RankedLists, k: int) -> torch.Tensor:
    """F1@K = 2 P R / (P + R) of the user's Precision@K P and Recall@K R (0 when both are 0),
    averaged over users like every @K metric (not the F1 of the mean P and mean R)."""
    hits = top.hits[:, :k].sum(1).double()
    p, r = hits / k, hits / top.n_targets
    return torch.where(hits > 0, 2 * p * r / (p + r).clamp(min=1e-300), 0.0).mean()


@_register("ndcg", "ranking")
def ndcg(top: RankedLists, k: int) -> torch.Tensor:
    """NDCG@K = DCG@K / IDCG@K with DCG@K = sum_{r<=K} rel_r / log2(r + 1) and
    IDCG@K = sum_{r<=min(T, K)} 1 / log2(r + 1), the DCG of a perfect list."""
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, device=top.hits.device, dtype=torch.float64))
    dcg = (top.hits[:, :k].double() * discount).sum(1)
    ideal = torch.cumsum(discount, 0)[top.n_targets.clamp(max=k) - 1]
    return (dcg / ideal).mean()


@_register("mrr", "ranking")
def mrr(top: RankedLists, k: int) -> torch.Tensor:
    """MRR@K = 1 / (rank of the first target within the top K), 0 when there is none."""
    hits = top.hits[:, :k]
    first = hits.int().argmax(1)  # argmax returns the first maximal position
    return torch.where(hits.any(1), 1.0 / (first + 1).double(), 0.0).mean()


@_register("map", "ranking")
def mean_average_precision(top: RankedLists, k: int) -> torch.Tensor:
    """MAP@K = mean over users of AP@K = (1 / min(T, K)) * sum_{r<=K} rel_r * Precision@r."""
    hits = top.hits[:, :k].double()
    precision_at = hits.cumsum(1) / torch.arange(1, k + 1, device=hits.device)
    return ((hits * precision_at).sum(1) / top.n_targets.clamp(max=k)).mean()


@_register("coverage", "ranking")
def coverage(top: RankedLists, k: int) -> torch.Tensor:
    """Coverage@K = |union over evaluated users u of top-K(u)| / n_items: the share of the
    catalogue recommended to at least one user (empty slots, ``-1``, do not count)."""
    items = top.items[:, :k]
    shown = torch.zeros(top.n_items, dtype=torch.bool, device=items.device)
    shown[items[items >= 0]] = True
    return shown.sum().double() / top.n_items


# -- rating ------------------------------------------------------------------------------------
@_register("rmse", "rating", higher_is_better=False)
def rmse(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """RMSE = sqrt((1 / N) * sum_i (ŷ_i - y_i)^2)."""
    return (predicted.double() - truth.double()).square().mean().sqrt()


@_register("mse", "rating", higher_is_better=False)
def mse(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """MSE = (1 / N) * sum_i (ŷ_i - y_i)^2, the loss rating models train on (RMSE squared)."""
    return (predicted.double() - truth.double()).square().mean()


@_register("mae", "rating", higher_is_better=False)
def mae(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """MAE = (1 / N) * sum_i |ŷ_i - y_i|."""
    return (predicted.double() - truth.double()).abs().mean()


# -- request checking, ranking and computing ---------------------------------------------------
def check_request(task: str, metrics: Iterable[str], ks: Iterable[int]) -> tuple[list[str], list[int]]:
    """Validate metric names and cutoffs for ``task``; returns them as lists (cutoffs sorted,
    duplicates dropped). Raises ``ConfigError`` (a ``ValueError``) naming what is wrong."""
    if task not in TASKS:
        raise ConfigError(f"task must be 'ranking' or 'rating', got {task!r}")
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    known = [name for name, metric in METRICS.items() if metric.task == task]
    if not metrics:
        raise ConfigError(f"no metrics asked for; {task} metrics are: {', '.join(known)}")
    for name in metrics:
        if name not in known:
            hint = " (cutoffs go in ks, e.g. metrics: [ndcg], ks: [10])" if "@" in str(name) else ""
            raise ConfigError(f"unknown {task} metric {name!r}{hint}; {task} metrics are: {', '.join(known)}")
    ks = list(ks or [])
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ConfigError(f"cutoffs ks must be positive integers, got {k!r}")
    ks = [int(k) for k in ks]
    if task == "ranking" and not ks:
        raise ConfigError("ranking metrics need at least one cutoff in ks, e.g. [10]")
    if task == "rating" and ks:
        raise ConfigError(f"rating metrics take no cutoffs, got ks={ks}")
    return list(dict.fromkeys(metrics)), sorted(set(ks))


def ranked_items(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Item ids of the ``k`` best-scored items of each row, best first: (rows, k) long.

    Equal scores rank the lower item id first. Scores of ``-inf`` (masked items) are never
    recommended: their slots, and the slots past the end of a catalogue shorter than ``k``,
    hold ``-1``. Scores are compared as float32, float64 ones in their own precision (serving
    breaks ties by adding popularity below 1e-9); NaN raises ``FloatingPointError``.
    """
    if scores.dtype != torch.float64:
        scores = scores.float()  # one precision for both paths below (a no-op for float32)
    if scores.numel() and torch.isnan(scores.max()):  # max propagates NaN: cheaper than isnan
        raise FloatingPointError("the model returned NaN scores: it has probably diverged")
    n_items = scores.shape[1]
    depth = min(k, n_items)
    # One place past the cutoff shows whether equal scores can change a row's list; only those
    # rows pay for the exact (slower) tie-breaking sort.
    values, items = torch.topk(scores, min(depth + 1, n_items), dim=1)
    tied = (values[:, 1:] == values[:, :-1]).any(1)
    # the top values are right whatever the tie order; contiguous keeps later passes vectorised
    values, items = values[:, :depth].contiguous(), items[:, :depth].contiguous()
    if tied.any():
        items[tied] = _tie_broken_top(scores[tied], depth)
    items[values == float("-inf")] = -1
    return F.pad(items, (0, k - depth), value=-1) if k > depth else items


def _tie_broken_top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Top ``k`` of ``scores``, equal scores in ascending item id. float32: by an exact sort key
    in one int64, the float's bits made order-preserving as an int32 (flip the magnitude bits of
    negatives), then the reversed item id in the low digits. float64 leaves no room for the id:
    a stable sort, which keeps equal scores in item order."""
    if scores.dtype == torch.float64:
        return torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    n_items = scores.shape[1]
    key = (scores + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0 so the two tie
    key ^= (key >> 31) & 0x7FFFFFFF
    keys = key.long()
    keys *= n_items
    keys += torch.arange(n_items - 1, -1, -1, device=scores.device)
    return torch.topk(keys, k, dim=1).indices


def compute_ranking(top: RankedLists, metrics: list[str], ks: list[int]) -> dict[str, float]:
    """``{"<metric>@<k>": value}`` for every metric and cutoff (``top`` holds >= max(ks) columns)."""
    names = [f"{name}@{k}" for name in metrics for k in ks]
    values = [METRICS[name].compute(top, k) for name in metrics for k in ks]
    return dict(zip(names, torch.stack(values).tolist(), strict=True))


def ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    ks: Iterable[int],
    metrics: Iterable[str] = ("ndcg", "recall", "precision", "f1", "hit", "mrr", "map", "coverage"),
    mask: torch.Tensor | None = None,
) -> dict[str, float]:
    """Ranking metrics straight from a dense (users, items) score matrix, for hand-made cases.

    ``targets`` is a bool matrix of the held-out items, ``mask`` an optional bool matrix of
    items that may not be recommended (a user's training items). Masked items never count as
    targets; users left without a target are skipped; ``ValueError`` when none is left.
    """
    metrics, ks = check_request("ranking", metrics, ks)
    targets = targets.bool()
    if mask is not None:
        scores = scores.float().masked_fill(mask.bool(), float("-inf"))
        targets = targets & ~mask.bool()
    evaluated = targets.any(1)
    if not evaluated.any():
        raise ValueError("no user has a target item outside the mask: nothing to evaluate")
    scores, targets = scores[evaluated], targets[evaluated]
    items = ranked_items(scores, max(ks))
    hits = targets.gather(1, items.clamp(min=0)) & (items >= 0)
    return compute_ranking(RankedLists(items, hits, targets.sum(1), scores.shape[1]), metrics, ks)


def rating_metrics(predicted: torch.Tensor, truth: torch.Tensor,
                   metrics: Iterable[str] = ("rmse", "mse", "mae")) -> dict[str, float]:
    """``{"rmse": ..., "mse": ..., "mae": ...}`` of predicted against true ratings (1-d, same length > 0)."""
    metrics, _ = check_request("rating", metrics, [])
    if predicted.shape != truth.shape or predicted.dim() != 1 or len(truth) == 0:
        raise ValueError(f"need two equal, non-empty 1-d tensors, got {tuple(predicted.shape)} and {tuple(truth.shape)}")
    values = torch.stack([METRICS[name].compute(predicted, truth) for name in metrics])
    return dict(zip(metrics, values.tolist(), strict=True))
