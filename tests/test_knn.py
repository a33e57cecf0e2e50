"""Item- and user-KNN: similarities, pruning, scores and rating predictions against hand
computations on tiny matrices, and learning the planted dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recsearch.data.dataset import Dataset
from recsearch.models import Recommender
from recsearch.models.knn import ItemKNN, UserKNN, top_k_neighbours

# Three users, four items. Binary pattern (ranking) and ratings (rating task):
#        i0 i1 i2 i3          i0 i1 i2 i3
#   u0 [  1  1  .  . ]   u0 [  5  3  .  . ]
#   u1 [  1  1  1  . ]   u1 [  4  2  5  . ]
#   u2 [  .  1  1  1 ]   u2 [  .  1  4  2 ]
USERS = np.array([0, 0, 1, 1, 1, 2, 2, 2])
ITEMS = np.array([0, 1, 0, 1, 2, 1, 2, 3])
RATINGS = np.array([5, 3, 4, 2, 5, 1, 4, 2], dtype=np.float32)
R6, R3, R2 = math.sqrt(6), math.sqrt(3), math.sqrt(2)


@pytest.fixture
def tiny_dataset(make_dataset) -> Dataset:
    """The matrices above as a dataset (timestamps in row order)."""
    return make_dataset(USERS, ITEMS, RATINGS, name="tiny")


def item_rows(values: np.ndarray) -> sp.csr_matrix:
    """Items x users: the rows item-KNN compares."""
    return sp.csr_matrix((values, (ITEMS, USERS)), shape=(4, 3))


def similarity_matrix(rows: sp.csr_matrix, similarity: str, shrinkage: float = 0.0, k: int = 10) -> np.ndarray:
    indptr, indices, values = top_k_neighbours(rows, similarity, k, shrinkage)
    return sp.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()), shape=(rows.shape[0],) * 2).toarray()


# Item columns over (u0, u1, u2): i0 = (1,1,0), i1 = (1,1,1), i2 = (0,1,1), i3 = (0,0,1).
# Cosine: a·b / (|a||b|), e.g. i0·i1 = 2, |i0| = √2, |i1| = √3 -> 2/√6.
COSINE = np.array([
    [0, 2 / R6, 1 / 2, 0],
    [2 / R6, 0, 2 / R6, 1 / R3],
    [1 / 2, 2 / R6, 0, 1 / R2],
    [0, 1 / R3, 1 / R2, 0],
])
# Jaccard: n_ab / (n_a + n_b - n_ab), e.g. i0, i1: 2 / (2 + 3 - 2); i2, i3: 1 / (2 + 1 - 1).
JACCARD = np.array([
    [0, 2 / 3, 1 / 3, 0],
    [2 / 3, 0, 2 / 3, 1 / 3],
    [1 / 3, 2 / 3, 0, 1 / 2],
    [0, 1 / 3, 1 / 2, 0],
])
# Pearson over all N = 3 users: (N a·b - Σa Σb) / sqrt((N Σa² - (Σa)²)(N Σb² - (Σb)²)).
# i1 is constant (all ones): zero variance, no correlation with anything. i0, i2: (3·1 - 2·2) / 2
# = -1/2 and i0, i3: (0 - 2) / 2 = -1 are negative, so dropped; i2, i3: (3·1 - 2·1) / 2 = 1/2.
PEARSON = np.array([
    [0, 0, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 1 / 2],
    [0, 0, 1 / 2, 0],
])
# Euclidean: 1 / (1 + ‖a − b‖), on binary rows ‖a − b‖² = n_a + n_b − 2 n_ab, e.g. i0, i1: 2 + 3 − 4 = 1
# -> 1/2; i0, i3: 2 + 1 − 0 = 3 -> 1 / (1 + √3), positive though they share no user.
E1, E2, E3 = 1 / 2, 1 / (1 + R2), 1 / (1 + math.sqrt(3))
EUCLIDEAN = np.array([
    [0, E1, E2, E3],
    [E1, 0, E1, E2],
    [E2, E1, 0, E1],
    [E3, E2, E1, 0],
])
# Shared users n_ab, for shrinkage sim * n_ab / (n_ab + λ).
COMMON = np.array([[2, 2, 1, 0], [2, 3, 2, 1], [1, 2, 2, 1], [0, 1, 1, 1]])


@pytest.mark.parametrize("similarity, expected", [("cosine", COSINE), ("jaccard", JACCARD), ("pearson", PEARSON),
                                                   ("euclidean", EUCLIDEAN)])
@pytest.mark.parametrize("shrinkage", [0.0, 2.0])
def test_similarities_match_hand_computation(similarity, expected, shrinkage):
    shrunk = expected * COMMON / (COMMON + shrinkage) if shrinkage else expected
    got = similarity_matrix(item_rows(np.ones(len(USERS), np.float32)), similarity, shrinkage)
    np.testing.assert_allclose(got, shrunk, atol=1e-6)


def test_rating_similarities_use_values_and_jaccard_ignores_them():
    rows = item_rows(RATINGS)  # i0 = (5, 4, 0), i1 = (3, 2, 1): i0·i1 = 15 + 8 = 23
    cosine = similarity_matrix(rows, "cosine", shrinkage=1.0)
    assert cosine[0, 1] == pytest.approx(23 / math.sqrt(41 * 14) * 2 / 3, abs=1e-6)  # n_01 = 2
    np.testing.assert_allclose(similarity_matrix(rows, "jaccard"), JACCARD, atol=1e-6)
    # i0 − i1 = (2, 2, −1): distance 3; i0 − i3 = (5, 4, −2): distance √45
    euclidean = similarity_matrix(rows, "euclidean")
    assert euclidean[0, 1] == pytest.approx(1 / 4) and euclidean[0, 3] == pytest.approx(1 / (1 + math.sqrt(45)))


def test_top_k_keeps_the_k_largest_similarities_per_row():
    rng = np.random.default_rng(0)
    rows = sp.random(40, 30, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    full = similarity_matrix(rows, "cosine", k=40)
    pruned = similarity_matrix(rows, "cosine", k=3)
    assert ((pruned > 0).sum(1) <= 3).all()
    assert np.all((pruned == 0) | (pruned == full)), "kept values must be the true similarities"
    np.testing.assert_allclose(np.sort(pruned, 1)[:, -3:], np.sort(full, 1)[:, -3:], atol=1e-6)


def test_item_knn_scores_by_hand(tiny_dataset):
    model = ItemKNN(k=3, device="cpu").fit(tiny_dataset)
    # u0 has i0 and i1: score(i) = sim(i, i0) + sim(i, i1), self-similarity excluded.
    expected = [2 / R6, 2 / R6, 1 / 2 + 2 / R6, 1 / R3]
    np.testing.assert_allclose(model.score([0])[0].numpy(), expected, atol=1e-6)


def test_user_knn_scores_by_hand_and_pruning_changes_them(tiny_dataset):
    # Users over items: u0 = (1,1,0,0), u1 = (1,1,1,0), u2 = (0,1,1,1).
    # cos(u0, u1) = 2/√6, cos(u0, u2) = 1/√6. score(u0, i) = Σ_v sim(u0, v) x(v, i).
    model = UserKNN(k=2, similarity="cosine", device="cpu").fit(tiny_dataset)
    a, b = 2 / R6, 1 / R6
    np.testing.assert_allclose(model.score([0])[0].numpy(), [a, a + b, a + b, b], atol=1e-6)
    nearest_only = UserKNN(k=1, similarity="cosine", device="cpu").fit(tiny_dataset)  # u1 alone
    np.testing.assert_allclose(nearest_only.score([0])[0].numpy(), [a, a, a, 0], atol=1e-6)


def with_neighbours(model, neighbours: dict[int, dict[int, float]]):
    """Replace the learned neighbours by hand-picked ones, to check the prediction formula alone."""
    n = model.n_items if isinstance(model, ItemKNN) else model.n_users
    indptr, indices, values = [0], [], []
    for row in range(n):
        for col, sim in sorted(neighbours.get(row, {}).items()):
            indices.append(col)
            values.append(sim)
        indptr.append(len(indices))
    model.load_state({"indptr": torch.tensor(indptr), "indices": torch.tensor(indices, dtype=torch.long),
                      "similarity": torch.tensor(values, dtype=torch.float32)})
    return model


def test_item_knn_rating_prediction_by_hand(tiny_dataset):
    model = ItemKNN(k=3, task="rating", device="cpu").fit(tiny_dataset)
    with_neighbours(model, {0: {1: 0.5, 2: 0.25}, 2: {0: 0.5, 1: 0.25}, 3: {2: 0.5}})
    # Item means: μ0 = 4.5, μ1 = 2, μ2 = 4.5, μ3 = 2.
    # (u2, i0): u2 rated i1 = 1 and i2 = 4 -> 4.5 + (0.5 (1 - 2) + 0.25 (4 - 4.5)) / 0.75 = 4.5 - 0.625/0.75
    # (u0, i2): u0 rated i0 = 5 and i1 = 3 -> 4.5 + (0.5 · 0.5 + 0.25 · 1) / 0.75 = 5.1667, clipped to 5
    # (u0, i3): u0 rated no neighbour of i3 -> μ3 = 2;  (u1, i1): i1 has no neighbours -> μ1 = 2
    predicted = model.predict([2, 0, 0, 1], [0, 2, 3, 1]).numpy()
    np.testing.assert_allclose(predicted, [4.5 - 0.625 / 0.75, 5.0, 2.0, 2.0], atol=1e-5)


def test_user_knn_rating_prediction_by_hand(tiny_dataset):
    model = UserKNN(k=2, task="rating", device="cpu").fit(tiny_dataset)
    with_neighbours(model, {0: {1: 0.6, 2: 0.2}, 2: {0: 0.5}})
    # User means: μ_u0 = 4, μ_u1 = 11/3, μ_u2 = 7/3.
    # (u0, i3): only u2 rated i3 (2) -> 4 + 0.2 (2 - 7/3) / 0.2 = 11/3
    # (u2, i0): u0 rated i0 (5) -> 7/3 + (5 - 4) = 10/3
    # (u2, i2): u0 did not rate i2 -> μ_u2 = 7/3
    predicted = model.predict([0, 2, 2], [3, 0, 2]).numpy()
    np.testing.assert_allclose(predicted, [11 / 3, 10 / 3, 7 / 3], atol=1e-5)


def test_rating_model_round_trips_and_a_corrupt_state_is_refused(tiny_dataset, tmp_path):
    model = UserKNN(k=2, task="rating", device="cpu").fit(tiny_dataset)
    loaded = Recommender.load(model.save(tmp_path / "userknn"), device="cpu")
    assert loaded.task == "rating"
    torch.testing.assert_close(loaded.predict([0, 2, 1], [3, 0, 3]), model.predict([0, 2, 1], [3, 0, 3]))
    corrupt = {**model.state(), "indices": model.state()["indices"] + 10}
    with pytest.raises(ValueError, match="corrupt neighbour state"):
        loaded.load_state(corrupt)


@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
@pytest.mark.parametrize("similarity", ["cosine", "pearson", "jaccard", "euclidean"])
def test_learns_the_planted_split(cls, similarity, planted_split):
    model = cls(k=20, similarity=similarity, device="cpu").fit(planted_split.train)
    test = planted_split.test
    top, _ = model.recommend(test.user, 10)
    hit_rate = (top.numpy() == test.item[:, None]).any(1).mean()
    assert hit_rate > 0.6, f"hit@10 {hit_rate:.2f}; chance is about 10/48"


@pytest.mark.parametrize("cls", [ItemKNN, UserKNN])
@pytest.mark.parametrize("params, message", [
    ({"similarity": "euclid"}, "unknown similarity 'euclid'"),
    ({"k": 0}, "k .* positive integer"),
    ({"k": 2.5}, "k .* positive integer"),
    ({"shrinkage": -1.0}, "shrinkage must be >= 0"),
])
def test_bad_hyperparameters_raise(cls, params, message):
    with pytest.raises(ValueError, match=message):
        cls(**params)
