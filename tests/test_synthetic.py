"""The synthetic generator: shapes, determinism, the planted structure, and its truth."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.datasets import SYNTHETIC_SMALL as SMALL

from recsearch.data.preprocess import preprocess
from recsearch.data.synthetic import generate, generate_with_truth
from recsearch.errors import ConfigError


def follow_rate(dataset, truth) -> float:
    """Share of consecutive events of a user whose cluster is the successor of the previous one."""
    inter = dataset.interactions
    order = np.lexsort((inter.timestamp, inter.user))
    user, cluster = inter.user[order], truth.item_cluster[inter.item[order]]
    same_user = user[1:] == user[:-1]
    return float((truth.successor[cluster[:-1]] == cluster[1:])[same_user].mean())


def test_shapes_ids_features(synthetic_small):
    data, truth = synthetic_small
    assert (data.n_users, data.n_items, len(data.interactions)) == (400, 300, 20_000)
    assert data.user_ids[7] == "u7" and data.item_ids[11] == "i11" and data.item_titles is not None
    assert data.item_features["category"].of(11) == [f"c{truth.item_cluster[11]}"]
    agree = np.mean([data.user_features["segment"].of(u)[0] == f"c{truth.user_taste[u].argmax()}" for u in range(400)])
    assert 0.7 < agree < 1.0  # the segment is the top taste cluster, with some noise
    assert np.bincount(data.interactions.user, minlength=400).min() >= 5
    times = data.interactions.timestamp
    assert np.all(np.diff(times)[np.diff(data.interactions.user) == 0] > 0)  # each history moves forward


def test_deterministic_for_a_seed():
    a, b, c = generate(**SMALL, seed=1), generate(**SMALL, seed=1), generate(**SMALL, seed=2)
    for field in ("user", "item", "rating", "timestamp"):
        np.testing.assert_array_equal(getattr(a.interactions, field), getattr(b.interactions, field))
    assert not np.array_equal(a.interactions.item, c.interactions.item)


def test_ratings_are_1_to_5_and_follow_the_affinity(synthetic_small):
    data, truth = synthetic_small
    ratings = data.interactions.rating
    assert set(np.unique(ratings)) <= {1, 2, 3, 4, 5} and len(np.unique(ratings)) == 5
    expected = truth.expected_ratings(data.interactions.user, data.interactions.item)
    assert np.corrcoef(expected, ratings)[0, 1] > 0.8


def test_popularity_follows_the_power_law():
    def top_decile_share(exponent):
        data, _ = generate_with_truth(**SMALL, popularity_exponent=exponent, seed=0)
        counts = np.sort(np.bincount(data.interactions.item, minlength=300))[::-1]
        return counts[:30].sum() / counts.sum()

    flat, steep = top_decile_share(0.0), top_decile_share(1.2)
    assert flat < 0.25 and steep > 0.5  # 10% of the items draw >50% of the events under a steep law


def test_sequential_structure_is_measurable():
    rates = {s: follow_rate(*generate_with_truth(**SMALL, sequential_strength=s, seed=0)) for s in (0.0, 0.8)}
    assert rates[0.0] < 0.3  # chance of a taste draw landing on the successor cluster
    assert rates[0.8] > 0.8  # 0.8 + 0.2 * chance


def test_truth_matches_the_sampled_frequencies():
    """Sampling is exact: with no sequential steps every event is drawn from ``true_scores``,
    so each item's frequency is within 5 standard errors of its probability (clusters of 50
    items span two sampling blocks, so block edges are covered)."""
    data, truth = generate_with_truth(n_users=2, n_items=100, n_interactions=100_000, n_factors=2,
                                      sequential_strength=0.0, seed=5)
    probabilities = np.exp(truth.true_scores(np.arange(2)))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    for user in range(2):
        seen = data.interactions.item[data.interactions.user == user]
        empirical = np.bincount(seen, minlength=100) / len(seen)
        error = np.sqrt(probabilities[user] * (1 - probabilities[user]) / len(seen))
        assert np.all(np.abs(empirical - probabilities[user]) < 5 * error + 1e-4)
    top = truth.top_items(np.arange(2), 3)
    assert np.all(np.take_along_axis(probabilities, top, 1)[:, 0] == probabilities.max(axis=1))


def test_cluster_shares_include_the_sequential_steps():
    data, truth = generate_with_truth(n_users=2, n_items=40, n_interactions=60_000, n_factors=4,
                                      sequential_strength=0.6, seed=6)
    shares = truth.cluster_shares(np.arange(2))
    assert not np.allclose(shares, truth.user_taste, atol=0.05)  # following moves mass along the cycle
    for user in range(2):
        clusters = truth.item_cluster[data.interactions.item[data.interactions.user == user]]
        np.testing.assert_allclose(np.bincount(clusters, minlength=4) / len(clusters), shares[user], atol=0.015)


def test_truth_is_recoverable_from_the_data(synthetic_small):
    """What a model must learn is in the data: each user's interaction counts follow their own
    true preferences much more closely than another user's, or than item popularity."""
    data, truth = synthetic_small
    counts = data.matrix().toarray()
    scores = np.exp(truth.true_scores(np.arange(data.n_users)))
    popularity = counts.sum(axis=0)

    def mean_correlation(reference):
        return np.mean([np.corrcoef(counts[u], reference(u))[0, 1] for u in range(data.n_users)])

    own = mean_correlation(lambda u: scores[u])
    assert own > 0.55
    assert own > mean_correlation(lambda u: scores[(u + 1) % data.n_users]) + 0.3
    assert own > mean_correlation(lambda u: popularity) + 0.15


def test_truth_follows_preprocessing(synthetic_small):
    data, truth = synthetic_small
    cleaned, dropped = preprocess(data, min_user_interactions=60, min_item_interactions=20)
    assert dropped["users_removed"] > 0 and dropped["items_removed"] > 0
    aligned = truth.for_dataset(cleaned)
    kept_items = np.char.lstrip(cleaned.item_ids.astype(str), "i").astype(int)
    np.testing.assert_array_equal(aligned.item_cluster, truth.item_cluster[kept_items])
    assert aligned.user_factors.shape == (cleaned.n_users, 6)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_users": 0}, "n_users must be a positive integer"),
    ({"n_items": 3, "n_factors": 8}, "every cluster needs an item"),
    ({"sequential_strength": 1.5}, r"sequential_strength must be in \[0, 1\]"),
    ({"popularity_exponent": -1}, "popularity_exponent must be >= 0"),
])
def test_bad_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        generate(**kwargs)
