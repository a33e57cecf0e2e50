"""The metric registry on hand-made score matrices: hand-computed values, ties, masking, short
catalogues, scikit-learn's NDCG and a plain-Python reference of every ranking metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import ndcg_score

from recsearch.errors import ConfigError
from recsearch.evaluation import METRICS, ranked_items, ranking_metrics, rating_metrics
from recsearch.evaluation.metrics import check_request

ALL = ["ndcg", "recall", "precision", "f1", "hit", "mrr", "map", "coverage"]


def dense(rows: list[list[int]], n_items: int) -> torch.Tensor:
    """A (len(rows), n_items) bool matrix with True at the listed items of each row."""
    matrix = torch.zeros(len(rows), n_items, dtype=torch.bool)
    for r, items in enumerate(rows):
        matrix[r, items] = True
    return matrix


def test_registry_holds_one_unit_per_metric_with_its_formula():
    assert sorted(METRICS) == sorted(ALL + ["rmse", "mse", "mae"])
    for metric in METRICS.values():
        assert "=" in metric.compute.__doc__, metric.name


def test_two_users_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4],   # ranks items 0, 1, 2, 3, 4, 5
                           [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])  # ranks items 5, 4, 3, 2, 1, 0
    targets = dense([[1, 3, 5], [0]], 6)
    got = ranking_metrics(scores, targets, ks=[1, 4])
    # User 0, K=4: rel = [0, 1, 0, 1], T = 3.  User 1, K=4: rel = [0, 0, 0, 0], T = 1.
    dcg = 1 / math.log2(3) + 1 / math.log2(5)  # hits at ranks 2 and 4
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)  # min(T, K) = 3 ideal hits
    expected = {
        "hit@4": (1 + 0) / 2,
        "precision@4": (2 / 4 + 0) / 2,
        "recall@4": (2 / 3 + 0) / 2,
        "f1@4": (4 / 7 + 0) / 2,  # 2 (1/2)(2/3) / (1/2 + 2/3)
        "ndcg@4": (dcg / idcg + 0) / 2,
        "mrr@4": (1 / 2 + 0) / 2,  # first hit at rank 2
        "map@4": ((1 / 3) * (1 / 2 + 2 / 4) + 0) / 2,  # AP = (P@2 + P@4) / min(3, 4)
        "coverage@4": 6 / 6,  # {0, 1, 2, 3} | {5, 4, 3, 2} is the whole catalogue
        "coverage@1": 2 / 6,  # {0} | {5}
    }
    expected.update({f"{name}@1": 0.0 for name in ALL if name != "coverage"})  # items 0 and 5 miss
    assert got == pytest.approx(expected, abs=1e-12)
    assert list(got) == [f"{name}@{k}" for name in ALL for k in (1, 4)]


def test_f1_is_the_mean_of_each_users_f1():
    """Two users with different precision and recall: F1@K averages the per-user harmonic
    means, which differs from the harmonic mean of the averaged P and R."""
    scores = torch.tensor([[4.0, 3, 2, 1]] * 2)  # both rank 0, 1, 2, 3
    targets = dense([[0], [0, 1, 2, 3]], 4)
    got = ranking_metrics(scores, targets, ks=[2], metrics=["precision", "recall", "f1"])
    # K=2: user 0 P = 1/2, R = 1, F1 = 2/3; user 1 P = 1, R = 2/4, F1 = 2/3
    assert got == pytest.approx({"precision@2": 3 / 4, "recall@2": 3 / 4, "f1@2": 2 / 3}, abs=1e-12)


def test_more_targets_than_k_and_a_late_first_hit():
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1]] * 2)  # both rank 0, 1, 2, 3, 4, 5
    targets = dense([[0, 1, 2], [2]], 6)
    got = ranking_metrics(scores, targets, ks=[2, 4], metrics=["ndcg", "recall", "map", "mrr"])
    # User 0, K=2: rel = [1, 1], T = 3: a perfect list for NDCG and MAP (min(T, K) = 2), but
    # recall = 2 / T = 2/3 (RecBole's definition).  User 1: rel = [0, 0] at K=2.
    assert got["ndcg@2"] == pytest.approx((1 + 0) / 2)
    assert got["map@2"] == pytest.approx((1 + 0) / 2)
    assert got["recall@2"] == pytest.approx((2 / 3 + 0) / 2)
    # K=4: user 0 rel = [1, 1, 1, 0] -> 1 everywhere; user 1 rel = [0, 0, 1, 0], T = 1:
    # NDCG = (1 / log2(4)) / 1 = 0.5, MRR = 1/3, AP = (1/3) / min(1, 4) = 1/3, recall = 1.
    assert got["ndcg@4"] == pytest.approx((1 + 0.5) / 2)
    assert got["mrr@4"] == pytest.approx((1 + 1 / 3) / 2)
    assert got["map@4"] == pytest.approx((1 + 1 / 3) / 2)
    assert got["recall@4"] == pytest.approx((1 + 1) / 2)


def test_ties_rank_the_lower_item_id_first():
    assert ranked_items(torch.zeros(1, 5), 3).tolist() == [[0, 1, 2]]
    assert ranked_items(torch.tensor([[1.0, 2, 2, 1]]), 4).tolist() == [[1, 2, 0, 3]]
    assert ranked_items(torch.tensor([[-0.0, 0.0, -1.0]]), 3).tolist() == [[0, 1, 2]]  # -0 ties +0
    assert ranked_items(torch.tensor([[-1.0, -2, -0.5, 3, float("inf")]]), 5).tolist() == [[4, 3, 2, 0, 1]]
    # Constant scores: the list is items 0, 1, ...; with item 2 the only target, hit@2 = 0, hit@3 = 1.
    got = ranking_metrics(torch.ones(1, 4), dense([[2]], 4), ks=[2, 3], metrics=["hit"])
    assert got == {"hit@2": 0.0, "hit@3": 1.0}


@pytest.mark.parametrize("k", [1, 5, 39, 40, 45])
def test_ranked_items_equals_a_stable_descending_sort(k):
    generator = torch.Generator().manual_seed(k)
    scores = torch.rand(60, 40, generator=generator)  # rows without ties take the fast path
    scores[::2] = torch.randint(-3, 4, (30, 40), generator=generator).float()  # many ties
    scores[torch.rand(60, 40, generator=generator) < 0.1] = float("-inf")
    scores[:, 7] = -0.0
    scores[5, :] = float("-inf")
    stable = torch.sort(scores + 0.0, dim=1, descending=True, stable=True).indices[:, :k]
    expected = torch.where(scores.gather(1, stable) == float("-inf"), -1, stable)
    expected = torch.nn.functional.pad(expected, (0, k - expected.shape[1]), value=-1)
    assert torch.equal(ranked_items(scores, k), expected)
    assert torch.equal(ranked_items(scores.double(), k), expected)


def test_masked_items_are_never_recommended_nor_targets():
    scores = torch.tensor([[9.0, 1, 5, 3],
                           [9.0, 8, 1, 1]])
    targets = dense([[0, 2], [1]], 4)
    mask = dense([[0], [1]], 4)
    got = ranking_metrics(scores, targets, ks=[1], mask=mask)
    # User 0: item 0 (score 9) is masked, so it is neither ranked nor a target: T = 1 (item 2),
    # the list is 2, 3, 1 and item 2 hits at rank 1.  User 1's only target is masked: skipped.
    assert got == {"ndcg@1": 1.0, "recall@1": 1.0, "precision@1": 1.0, "f1@1": 1.0, "hit@1": 1.0,
                   "mrr@1": 1.0, "map@1": 1.0, "coverage@1": 1 / 4}
    assert ranked_items(scores.masked_fill(mask, float("-inf")), 4).tolist() == [[2, 3, 1, -1], [0, 2, 3, -1]]


def test_users_without_targets_are_skipped():
    scores = torch.tensor([[3.0, 2, 1], [1.0, 2, 3]])
    alone = ranking_metrics(scores[:1], dense([[1]], 3), ks=[2])
    with_empty_user = ranking_metrics(scores, dense([[1], []], 3), ks=[2])
    assert with_empty_user == alone
    with pytest.raises(ValueError, match="no user has a target"):
        ranking_metrics(scores, dense([[], []], 3), ks=[2])


def test_k_larger_than_the_catalogue():
    # 3 items, item 0 masked, item 1 the target: the list is 1, 2 and three empty slots.
    got = ranking_metrics(torch.tensor([[3.0, 2, 1]]), dense([[1]], 3), ks=[5], mask=dense([[0]], 3))
    assert ranked_items(torch.tensor([[float("-inf"), 2, 1]]), 5).tolist() == [[1, 2, -1, -1, -1]]
    assert got == pytest.approx({"ndcg@5": 1.0, "recall@5": 1.0, "precision@5": 1 / 5, "hit@5": 1.0, "mrr@5": 1.0,
                                 "map@5": 1.0, "coverage@5": 2 / 3,  # precision divides by K
                                 "f1@5": 2 * (1 / 5) / (1 / 5 + 1)}, abs=1e-12)


def test_nan_scores_raise():
    scores = torch.tensor([[1.0, float("nan"), 0.0]])
    with pytest.raises(FloatingPointError, match="NaN"):
        ranked_items(scores, 2)
    with pytest.raises(FloatingPointError, match="NaN"):
        ranked_items(torch.zeros(1, 3) / 0, 2)  # 0/0 is a negative NaN on x86


def random_case(seed: int, n_users: int = 40, n_items: int = 25, tied: bool = False):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, (n_users, n_items)).astype(np.float32) if tied else rng.random((n_users, n_items))
    mask = rng.random((n_users, n_items)) < 0.2
    targets = (rng.random((n_users, n_items)) < 0.25) & ~mask
    targets[:3] = False  # some users without a target
    return torch.tensor(scores, dtype=torch.float32), torch.tensor(targets), torch.tensor(mask)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ndcg_matches_scikit_learn(seed):
    scores, targets, mask = random_case(seed)
    evaluated = targets.any(1)
    # Removing a user's masked items is the same, for scikit-learn, as giving them relevance 0
    # (targets already exclude them) and scores below every other item: they can only fill the
    # list's tail once the unmasked items run out, and add nothing to DCG or IDCG.
    lowered = scores.masked_fill(mask, float(scores.min()) - 1)
    for k in (1, 3, 10, 25, 40):
        expected = ndcg_score(targets[evaluated].numpy(), lowered[evaluated].numpy(), k=k)
        got = ranking_metrics(scores, targets, ks=[k], metrics=["ndcg"], mask=mask)[f"ndcg@{k}"]
        assert got == pytest.approx(expected, abs=1e-6)


def reference(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, k: int) -> dict[str, float]:
    """Every ranking metric, one user at a time in plain Python, straight from the definitions."""
    per_user = {name: [] for name in ALL if name != "coverage"}
    shown = set()
    n_items = scores.shape[1]
    for u in range(len(scores)):
        allowed = [i for i in range(n_items) if not mask[u, i]]
        relevant = {i for i in allowed if targets[u, i]}
        if not relevant:
            continue
        top = sorted(allowed, key=lambda i: (-float(scores[u, i]), i))[:k]
        shown.update(top)
        rel = [1 if i in relevant else 0 for i in top]
        hits, t = sum(rel), len(relevant)
        per_user["hit"].append(1.0 if hits else 0.0)
        per_user["precision"].append(hits / k)
        per_user["recall"].append(hits / t)
        per_user["f1"].append(2 * (hits / k) * (hits / t) / (hits / k + hits / t) if hits else 0.0)
        dcg = sum(r / math.log2(rank + 2) for rank, r in enumerate(rel))
        per_user["ndcg"].append(dcg / sum(1 / math.log2(rank + 2) for rank in range(min(t, k))))
        per_user["mrr"].append(next((1 / (rank + 1) for rank, r in enumerate(rel) if r), 0.0))
        ap = sum(r * sum(rel[: rank + 1]) / (rank + 1) for rank, r in enumerate(rel))
        per_user["map"].append(ap / min(t, k))
    result = {f"{name}@{k}": sum(values) / len(values) for name, values in per_user.items()}
    result[f"coverage@{k}"] = len(shown) / n_items
    return result


@pytest.mark.parametrize("seed,tied", [(3, False), (4, True), (5, True)])
def test_every_metric_matches_a_plain_python_reference(seed, tied):
    scores, targets, mask = random_case(seed, tied=tied)
    ks = [1, 2, 5, 20, 40]
    got = ranking_metrics(scores, targets, ks=ks, mask=mask)
    expected = {}
    for k in ks:
        expected.update(reference(scores, targets, mask, k))
    assert got == pytest.approx(expected, abs=1e-9)


def test_rating_metrics_by_hand():
    predicted, truth = torch.tensor([3.0, 4.0, 5.0]), torch.tensor([4.0, 4.0, 3.0])
    # errors -1, 0, 2: RMSE = sqrt((1 + 0 + 4) / 3), MSE = (1 + 0 + 4) / 3, MAE = (1 + 0 + 2) / 3
    assert rating_metrics(predicted, truth) == pytest.approx({"rmse": math.sqrt(5 / 3), "mse": 5 / 3, "mae": 1.0})
    assert list(rating_metrics(predicted, truth, ["mae"])) == ["mae"]
    with pytest.raises(ValueError, match="equal, non-empty"):
        rating_metrics(predicted, truth[:2])


@pytest.mark.parametrize("task,metrics,ks,message", [
    ("ranking", ["ndcg", "auc"], [10], "unknown ranking metric 'auc'"),
    ("ranking", ["ndcg@10"], [10], "cutoffs go in ks"),
    ("ranking", ["rmse"], [10], "unknown ranking metric 'rmse'"),
    ("rating", ["ndcg"], [], "unknown rating metric 'ndcg'"),
    ("ranking", [], [10], "no metrics"),
    ("ranking", ["ndcg"], [], "at least one cutoff"),
    ("ranking", ["ndcg"], [0], "positive integers"),
    ("ranking", ["ndcg"], [-5], "positive integers"),
    ("ranking", ["ndcg"], [2.5], "positive integers"),
    ("ranking", ["ndcg"], ["10"], "positive integers"),
    ("ranking", ["ndcg"], [True], "positive integers"),
    ("rating", ["rmse"], [10], "no cutoffs"),
    ("ranking-ish", ["ndcg"], [10], "task must be"),
])
def test_bad_requests_fail_clearly(task, metrics, ks, message):
    with pytest.raises(ConfigError, match=message):
        check_request(task, metrics, ks)


def test_requests_are_normalised():
    assert check_request("ranking", ["ndcg", "hit", "ndcg"], [20, np.int64(5), 20]) == (["ndcg", "hit"], [5, 20])
