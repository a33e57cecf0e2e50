"""Synthetic interactions with planted, recoverable structure.

The generative model (``K = n_factors`` item clusters, ``d = n_factors`` taste dimensions):

* cluster centroids ``m_c`` are random unit vectors; item ``i`` belongs to cluster ``c_i``
  (clusters of equal size) and has factors ``v_i = m_{c_i} + 0.5 e_i``;
* user ``u`` has a cluster taste ``theta_u ~ Dirichlet(0.1)`` (one or two favourite clusters) and
  factors ``p_u = sum_c theta_uc m_c + 0.3 e_u`` (``e`` Gaussian noise of norm about 1);
* item popularity follows a power law over a random ranking: ``pi_i ~ rank_i^-a``, ``a`` =
  ``popularity_exponent``;
* each user's history is a sequence. A *fresh* step draws a cluster ``c ~ theta_u``; with
  probability ``s = sequential_strength`` a step instead *follows*: its cluster is the
  successor ``next(c)`` of the previous step's cluster (a fixed cyclic order of the clusters).
  Within the cluster the item is drawn with probability ``∝ pi_i exp(5 p_u·v_i)``;
* ratings are ``clip(round(3 + z_ui + b_u + b_i + eps), 1, 5)``, ``z_ui`` the affinity
  ``p_u·v_i`` standardised over random pairs, biases ``b ~ N(0, 0.3²)``, noise ``eps ~ N(0, 0.5²)``;
* timestamps increase along each user's sequence (exponential gaps), each user active over a
  random 20-100% stretch of one year, so that a global time cut leaves users on both sides.

Sampling is exact and vectorised: users are processed in chunks of about a million
user x item cells; in each chunk every draw is an inverse-CDF search (``np.searchsorted``)
restricted to its cluster's items, first over block sums, then inside one block.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from recsearch.data.dataset import UNKNOWN, Dataset, Feature, Interactions
from recsearch.errors import ConfigError

SHARPNESS = 5.0  # how strongly the affinity p_u·v_i steers the choice within a cluster
TASTE_CONCENTRATION = 0.1  # Dirichlet parameter of user cluster tastes: small = few favourites
ITEM_NOISE, USER_NOISE = 0.5, 0.3  # spread of factors around the cluster centroids
BIAS_STD, RATING_NOISE = 0.3, 0.5  # user/item rating biases, per-rating noise
SEGMENT_NOISE = 0.2  # share of users whose segment feature is random rather than their top cluster
START_TIME, SPAN = 1_500_000_000, 365 * 86_400  # seconds: users are active within one year
CHUNK_CELLS = 1 << 20  # user x item cells sampled at once: 4 MB of float32, 8 MB of float64


@dataclass(frozen=True)
class PlantedTruth:
    """The parameters behind a synthetic dataset; rows follow the dataset's contiguous ids
    as generated (use :meth:`for_dataset` after preprocessing removed users or items)."""

    user_factors: np.ndarray  # (n_users, d) p_u
    item_factors: np.ndarray  # (n_items, d) v_i
    user_taste: np.ndarray  # (n_users, K) theta_u, rows sum to 1
    item_cluster: np.ndarray  # (n_items,) c_i
    successor: np.ndarray  # (K,) the cluster a sequential step moves to
    popularity: np.ndarray  # (n_items,) pi_i, sums to 1
    user_bias: np.ndarray  # (n_users,)
    item_bias: np.ndarray  # (n_items,)
    affinity_mean: float  # standardisation of p_u·v_i for ratings
    affinity_std: float
    sequential_strength: float

    def cycle(self) -> np.ndarray:
        """The clusters in successor order, starting from cluster 0."""
        order = [0]
        while len(order) < len(self.successor):
            order.append(int(self.successor[order[-1]]))
        return np.array(order)

    def cluster_shares(self, users: np.ndarray) -> np.ndarray:
        """Long-run share of each cluster in a user's history, (len(users), K): the stationary
        law of the cluster chain, ``q_c = (1 - s) theta_c + s q_{prev(c)}``, i.e.
        ``q = (1 - s) sum_k s^k theta`` shifted ``k`` steps along the successor cycle."""
        s, k, cycle = self.sequential_strength, len(self.successor), self.cycle()
        taste = self.user_taste[np.asarray(users)][:, cycle]  # columns in cycle order
        norm = (1 - s) / (1 - s**k) if s < 1 else 1 / k  # s = 1: after one fresh step, the cycle forever
        shifted = sum(s**j * np.roll(taste, j, axis=1) for j in range(k)) * norm
        shares = np.empty_like(shifted)
        shares[:, cycle] = shifted
        return shares

    def true_scores(self, users: np.ndarray) -> np.ndarray:
        """``log P(i | u)`` of an event drawn from the user's long-run behaviour, (len(users),
        n_items), the ideal ranking when the order of events is not known:

        ``log q_u[c_i] + log pi_i + 5 p_u·v_i - log sum_{j in c_i} pi_j exp(5 p_u·v_j)``
        (``q_u`` from :meth:`cluster_shares`; with no sequential strength ``q_u = theta_u``)."""
        users = np.asarray(users)
        logits = SHARPNESS * (self.user_factors[users] @ self.item_factors.T) + np.log(self.popularity)
        shift = logits.max(axis=1, keepdims=True)
        weights = np.exp(logits - shift)
        n_clusters = len(self.successor)
        per_cluster = np.zeros((len(users), n_clusters))
        for c in range(n_clusters):  # K columns, not a loop over users or items
            per_cluster[:, c] = weights[:, self.item_cluster == c].sum(axis=1)
        with np.errstate(divide="ignore"):  # a cluster share may be 0: its items get -inf
            log_norm = np.log(per_cluster)[:, self.item_cluster] + shift
            log_taste = np.log(self.cluster_shares(users))[:, self.item_cluster]
        return log_taste + logits - log_norm

    def top_items(self, users: np.ndarray, k: int) -> np.ndarray:
        """The ``k`` items with the highest :meth:`true_scores` per user, best first."""
        scores = self.true_scores(users)
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)

    def expected_ratings(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noise-free rating of (user, item) pairs before rounding and clipping."""
        users, items = np.asarray(users), np.asarray(items)
        affinity = np.empty(len(users))
        for lo in range(0, len(users), 1 << 20):  # blocks: the gathered factors of 10M pairs are GBs
            block = slice(lo, lo + (1 << 20))
            affinity[block] = np.einsum("nd,nd->n", self.user_factors[users[block]], self.item_factors[items[block]])
        z = (affinity - self.affinity_mean) / self.affinity_std
        return 3.0 + z + self.user_bias[users] + self.item_bias[items]

    def for_dataset(self, dataset: Dataset) -> PlantedTruth:
        """The truth re-indexed to ``dataset``'s ids, e.g. after preprocessing dropped users or
        items: generated raw ids are ``u<row>`` and ``i<row>``."""
        users = np.char.lstrip(dataset.user_ids.astype(str), "u").astype(np.int64)
        items = np.char.lstrip(dataset.item_ids.astype(str), "i").astype(np.int64)
        return replace(self, user_factors=self.user_factors[users], user_taste=self.user_taste[users],
                       user_bias=self.user_bias[users], item_factors=self.item_factors[items],
                       item_cluster=self.item_cluster[items], popularity=self.popularity[items],
                       item_bias=self.item_bias[items])


def generate(n_users: int = 2000, n_items: int = 1000, n_interactions: int = 100_000, n_factors: int = 8,
             popularity_exponent: float = 0.8, sequential_strength: float = 0.5, seed: int = 0) -> Dataset:
    """A synthetic :class:`Dataset` (see the module docstring); :func:`generate_with_truth`
    also returns its parameters."""
    return generate_with_truth(n_users, n_items, n_interactions, n_factors, popularity_exponent,
                               sequential_strength, seed)[0]


def generate_with_truth(n_users: int = 2000, n_items: int = 1000, n_interactions: int = 100_000,
                        n_factors: int = 8, popularity_exponent: float = 0.8,
                        sequential_strength: float = 0.5, seed: int = 0) -> tuple[Dataset, PlantedTruth]:
    """``n_interactions`` events (repeats of a (user, item) pair included) by ``n_users`` users
    on ``n_items`` items; the same arguments always give the same data."""
    _check(n_users, n_items, n_interactions, n_factors, popularity_exponent, sequential_strength)
    rng = np.random.default_rng(seed)
    truth = _draw_truth(rng, n_users, n_items, n_factors, popularity_exponent, sequential_strength)
    counts = _history_lengths(rng, n_users, n_interactions)
    users, items, times = _sample_histories(rng, truth, counts)
    noisy = truth.expected_ratings(users, items) + rng.normal(0.0, RATING_NOISE, len(users))
    ratings = np.clip(np.rint(noisy), 1, 5)
    segment = truth.user_taste.argmax(axis=1)
    random_segment = rng.random(n_users) < SEGMENT_NOISE
    segment[random_segment] = rng.integers(n_factors, size=int(random_segment.sum()))
    clusters = [f"c{c}" for c in range(n_factors)]
    item_ids = np.char.add("i", np.arange(n_items).astype(str))
    dataset = Dataset(
        name="synthetic",
        interactions=Interactions(users, items, ratings, times),
        user_ids=np.char.add("u", np.arange(n_users).astype(str)),
        item_ids=item_ids,
        user_features={"segment": Feature.from_codes(segment + 1, [UNKNOWN, *clusters])},
        item_features={"category": Feature.from_codes(truth.item_cluster + 1, [UNKNOWN, *clusters])},
        item_titles=np.char.add(np.char.add("Item ", item_ids), np.char.add(" of ", np.array(clusters)[truth.item_cluster])),
    )
    return dataset, truth


def _check(n_users, n_items, n_interactions, n_factors, popularity_exponent, sequential_strength) -> None:
    for name, value in (("n_users", n_users), ("n_items", n_items), ("n_interactions", n_interactions),
                        ("n_factors", n_factors)):
        if int(value) != value or value < 1:
            raise ConfigError(f"synthetic {name} must be a positive integer, got {value!r}")
    if n_items < n_factors:
        raise ConfigError(f"synthetic n_items ({n_items}) must be >= n_factors ({n_factors}): every cluster needs an item")
    if popularity_exponent < 0:
        raise ConfigError(f"synthetic popularity_exponent must be >= 0, got {popularity_exponent}")
    if not 0 <= sequential_strength <= 1:
        raise ConfigError(f"synthetic sequential_strength must be in [0, 1], got {sequential_strength}")


def _draw_truth(rng: np.random.Generator, n_users: int, n_items: int, k: int, exponent: float,
                strength: float) -> PlantedTruth:
    centroids = rng.normal(size=(k, k))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    item_cluster = rng.permutation(np.arange(n_items) % k)
    item_factors = centroids[item_cluster] + ITEM_NOISE * rng.normal(size=(n_items, k)) / np.sqrt(k)
    taste = rng.dirichlet(np.full(k, TASTE_CONCENTRATION), size=n_users)
    user_factors = taste @ centroids + USER_NOISE * rng.normal(size=(n_users, k)) / np.sqrt(k)
    popularity = (rng.permutation(n_items) + 1.0) ** -exponent
    cycle = rng.permutation(k)
    successor = np.empty(k, dtype=np.int64)
    successor[cycle] = np.roll(cycle, -1)
    pairs = rng.integers((n_users, n_items), size=(4096, 2))  # affinity scale over random pairs
    affinity = np.einsum("nd,nd->n", user_factors[pairs[:, 0]], item_factors[pairs[:, 1]])
    return PlantedTruth(user_factors, item_factors, taste, item_cluster, successor, popularity / popularity.sum(),
                        rng.normal(0.0, BIAS_STD, n_users), rng.normal(0.0, BIAS_STD, n_items),
                        float(affinity.mean()), float(affinity.std()), float(strength))


def _history_lengths(rng: np.random.Generator, n_users: int, n_interactions: int) -> np.ndarray:
    """Heavy-tailed history lengths (log-normal shares) summing exactly to ``n_interactions``,
    at least 5 each when there are enough interactions."""
    floor = min(5, n_interactions // n_users)
    shares = rng.lognormal(0.0, 1.0, n_users)
    return floor + rng.multinomial(n_interactions - floor * n_users, shares / shares.sum())


def _sample_histories(rng: np.random.Generator, truth: PlantedTruth, counts: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) rows, user by user, each user's rows in time order."""
    n_users, n_items = len(counts), len(truth.item_cluster)
    k = len(truth.successor)
    by_cluster = np.argsort(truth.item_cluster, kind="stable")  # items laid out cluster by cluster
    chunk = max(1, CHUNK_CELLS // n_items)
    sampler = _InClusterSampler(truth.item_factors[by_cluster].T * SHARPNESS,
                                np.log(truth.popularity[by_cluster] / truth.popularity.max()),
                                truth.item_cluster[by_cluster], chunk)
    user_factors = truth.user_factors.astype(np.float32)
    cycle = truth.cycle()
    cycle_position = np.empty(k, dtype=np.int64)  # cluster -> place in the successor cycle
    cycle_position[cycle] = np.arange(k)
    row_start = np.concatenate([[0], np.cumsum(counts)])
    users = np.repeat(np.arange(n_users), counts)
    items = np.empty(len(users), dtype=np.int64)
    for first in range(0, n_users, chunk):
        last = min(first + chunk, n_users)
        lo, hi = row_start[first], row_start[last]
        if hi == lo:
            continue
        local = users[lo:hi] - first
        step = np.arange(hi - lo) - (row_start[first:last] - lo)[local]  # position in the history
        fresh = (step == 0) | (rng.random(hi - lo) >= truth.sequential_strength)
        taste = np.cumsum(truth.user_taste[first:last], axis=1)[local]
        drawn = np.minimum((taste < rng.random(hi - lo)[:, None]).sum(axis=1), k - 1)
        last_fresh = np.maximum.accumulate(np.where(fresh, np.arange(hi - lo), 0))
        cluster = cycle[(cycle_position[drawn[last_fresh]] + step - step[last_fresh]) % k]
        items[lo:hi] = by_cluster[sampler.draw(rng, user_factors[first:last], local, cluster)]
    active = rng.uniform(0.2, 1.0, n_users) * SPAN  # each user's stretch of activity
    mean_gap = active / np.maximum(counts, 1)
    gaps = 1 + np.floor(rng.exponential(1.0, len(users)) * mean_gap[users]).astype(np.int64)
    elapsed = np.cumsum(gaps)
    elapsed -= (elapsed - gaps)[row_start[users]]  # restart the clock at each user's first row
    start = START_TIME + np.floor(rng.random(n_users) * (SPAN - active)).astype(np.int64)
    return users, items, start[users] + elapsed


class _InClusterSampler:
    """Draws, for a chunk of users, one item per request ``n`` from user ``row[n]``'s
    distribution ``∝ pi_i exp(5 p_u·v_i)`` restricted to cluster ``cluster[n]``, exactly, by
    inverse-CDF search in two levels, so that no cumulative sum runs over every cell:

    1. items are laid out cluster by cluster, each cluster padded with zero-weight columns to
       whole blocks of ``BLOCK`` columns; the block sums of a user's weights are cumulated over
       the whole flattened chunk (so the sums increase across users too) and one
       ``searchsorted`` finds every request's block;
    2. within that block, a cumulative sum of its ``BLOCK`` weights finds the column.

    The buffers are allocated once and reused chunk after chunk."""

    BLOCK = 32

    def __init__(self, factors: np.ndarray, log_popularity: np.ndarray, cluster: np.ndarray, max_users: int):
        sizes = np.bincount(cluster)  # items are sorted by cluster
        padded = -(-sizes // self.BLOCK) * self.BLOCK
        self.first_block = np.concatenate([[0], np.cumsum(padded)[:-1]]) // self.BLOCK
        self.end_block = self.first_block + padded // self.BLOCK
        first_column = self.first_block * self.BLOCK
        self.last_column = first_column + sizes - 1
        columns = first_column[cluster] + np.arange(len(cluster)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        self.n_blocks = int(self.end_block[-1])
        n_cols = self.n_blocks * self.BLOCK
        self.item = np.full(n_cols, -1, dtype=np.int64)  # padded column -> item position
        self.item[columns] = np.arange(len(cluster))
        self.factors = np.zeros((factors.shape[0], n_cols), dtype=np.float32)  # (d, columns)
        self.factors[:, columns] = factors
        self.log_popularity = np.full(n_cols, -np.inf, dtype=np.float32)  # pads weigh exp(-inf) = 0
        self.log_popularity[columns] = log_popularity
        self.weights = np.empty((max_users, n_cols), dtype=np.float32)
        self.cumulative = np.zeros(max_users * self.n_blocks + 1)

    def draw(self, rng: np.random.Generator, user_factors: np.ndarray, row: np.ndarray,
             cluster: np.ndarray) -> np.ndarray:
        weights = self.weights[: len(user_factors)]
        # einsum, not BLAS: with d ~ 8 the BLAS threads spin more than they compute
        np.einsum("ud,dc->uc", user_factors, self.factors, out=weights, optimize=False)
        weights += self.log_popularity
        np.exp(weights, out=weights)  # logits <= 5 |p_u| |v_i|, about 10: no overflow, no max-shift
        blocks = weights.reshape(-1, self.BLOCK)
        cumulative = self.cumulative[: len(blocks) + 1]
        np.cumsum(blocks.sum(axis=1), dtype=np.float64, out=cumulative[1:])
        offset = row * self.n_blocks
        low, high = offset + self.first_block[cluster], offset + self.end_block[cluster]
        target = cumulative[low] + rng.random(len(row)) * (cumulative[high] - cumulative[low])
        block = np.clip(np.searchsorted(cumulative[1:], target, side="right"), low, high - 1)
        within = np.cumsum(blocks[block], axis=1, dtype=np.float64)
        position = np.minimum((within <= (target - cumulative[block])[:, None]).sum(axis=1), self.BLOCK - 1)
        column = np.minimum((block - offset) * self.BLOCK + position, self.last_column[cluster])
        return self.item[column]
