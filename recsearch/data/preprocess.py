"""Cleaning and splitting a loaded :class:`Dataset`, all vectorised over interaction rows.

Order applied by :func:`preprocess`: de-duplication, implicit threshold, k-core, re-indexing.
:func:`split` then cuts the interactions into train/valid/test. Every step logs what it
dropped (logger ``recsearch.data``) and returns the counts, so that nothing disappears silently.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Literal

import numpy as np
from pydantic import (  # the annotations recsearch.schema checks our arguments by
    Field,
    NonNegativeInt,
)

from recsearch.data.dataset import Dataset, Feature, Split
from recsearch.errors import ConfigError

logger = logging.getLogger("recsearch.data")

SCHEMES = ("random", "loo", "temporal", "kfold", "given", "cold_users", "cold_items")
COLD = {"cold_users": "user", "cold_items": "item"}  # scheme -> the entity it holds out whole


def check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Train, valid and test shares: three numbers >= 0, train > 0, summing to 1."""
    try:
        shares = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        shares = ()
    if len(shares) != 3 or min(shares) < 0 or shares[0] <= 0 or abs(sum(shares) - 1) > 1e-6:
        raise ConfigError(f"data.split.ratios: must be three shares train, valid, test >= 0 with train > 0 "
                          f"summing to 1, got {ratios!r}")
    return shares  # type: ignore[return-value]


def check_fold(fold: int, folds: int) -> None:
    if fold >= folds:
        raise ConfigError(f"data.split.fold: must be below data.split.folds ({folds}), got {fold}")


# -- cleaning ----------------------------------------------------------------------------------
def deduplicate(dataset: Dataset) -> tuple[Dataset, int]:
    """Keep only the latest event of each repeated (user, item) pair (later rows win ties);
    the kept rows stay in their original order."""
    inter = dataset.interactions
    pair = inter.user * dataset.n_items + inter.item
    order = sort_order(pair, inter.timestamp)
    pair = pair[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = pair[1:] != pair[:-1]
    kept = np.sort(order[last])
    return _report(dataset, kept, "duplicate (user, item) events (kept the latest)")


def apply_threshold(dataset: Dataset, threshold: float) -> tuple[Dataset, int]:
    """Implicit conversion: keep the interactions rated ``>= threshold`` as positives of
    value 1.0; the dataset is then implicit."""
    inter = dataset.interactions
    kept = np.flatnonzero(inter.rating >= threshold)
    dataset, dropped = _report(dataset, kept, f"interactions rated below {threshold:g}")
    inter = dataset.interactions
    ones = replace(inter, rating=np.ones(len(inter), dtype=np.float32))
    dataset = dataset.with_interactions(ones)
    dataset.explicit = False
    return dataset, dropped


def k_core(dataset: Dataset, min_user: int, min_item: int) -> tuple[Dataset, int]:
    """Drop interactions of users with fewer than ``min_user`` and items with fewer than
    ``min_item`` interactions, repeatedly, until every remaining user and item qualifies."""
    inter = dataset.interactions
    keep = np.ones(len(inter), dtype=bool)
    while True:
        users = np.bincount(inter.user[keep], minlength=dataset.n_users)
        items = np.bincount(inter.item[keep], minlength=dataset.n_items)
        still = keep & (users[inter.user] >= min_user) & (items[inter.item] >= min_item)
        if still.sum() == keep.sum():
            break
        keep = still
    return _report(dataset, np.flatnonzero(keep), f"interactions outside the {min_user}/{min_item}-core (users/items)")


def reindex(dataset: Dataset, profiles: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Dataset, int, int]:
    """Contiguous ids over the users and items that still have interactions, and those marked
    in ``profiles`` (boolean masks of users and items); id maps, features and titles follow.
    Returns the dataset and the numbers of users and items removed."""
    inter = dataset.interactions
    keep_users = np.bincount(inter.user, minlength=dataset.n_users) > 0
    keep_items = np.bincount(inter.item, minlength=dataset.n_items) > 0
    if profiles is not None:
        keep_users, keep_items = keep_users | profiles[0], keep_items | profiles[1]
    if keep_users.all() and keep_items.all():
        return dataset, 0, 0
    new_user = np.cumsum(keep_users) - 1
    new_item = np.cumsum(keep_items) - 1
    users, items = np.flatnonzero(keep_users), np.flatnonzero(keep_items)
    result = Dataset(
        name=dataset.name,
        interactions=replace(inter, user=new_user[inter.user], item=new_item[inter.item]),
        user_ids=dataset.user_ids[users],
        item_ids=dataset.item_ids[items],
        user_features={k: take_feature(f, users) for k, f in dataset.user_features.items()},
        item_features={k: take_feature(f, items) for k, f in dataset.item_features.items()},
        item_titles=None if dataset.item_titles is None else dataset.item_titles[items],
        explicit=dataset.explicit,
    )
    removed_users, removed_items = dataset.n_users - len(users), dataset.n_items - len(items)
    logger.info("%s: removed %d users and %d items left without interactions", dataset.name, removed_users, removed_items)
    return result, removed_users, removed_items


def take_feature(feature: Feature, entities: np.ndarray) -> Feature:
    """The feature restricted to ``entities`` (in that order), ragged rows gathered at once."""
    lengths = np.diff(feature.offsets)[entities]
    offsets = np.zeros(len(entities) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    positions = np.repeat(feature.offsets[entities] - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Feature(feature.vocabulary, offsets, feature.values[positions], feature.multi)


def _report(dataset: Dataset, kept: np.ndarray, what: str) -> tuple[Dataset, int]:
    dropped = len(dataset.interactions) - len(kept)
    if dropped:
        logger.info("%s: dropped %d %s", dataset.name, dropped, what)
        dataset = dataset.with_interactions(dataset.interactions.take(kept))
    return dataset, dropped


def preprocess(dataset: Dataset, dedup: bool = True, min_user_interactions: NonNegativeInt = 0,
               min_item_interactions: NonNegativeInt = 0, keep_profiles: bool = False,
               implicit_threshold: float | None = None) -> tuple[Dataset, dict[str, int]]:
    """De-duplicate, apply the implicit threshold (when not None), k-core filter, re-index.
    With ``keep_profiles`` users and items that came without any interaction (a reader's
    feature rows: profiles) keep their ids, for models that score them from their features;
    those whose interactions the steps removed go either way. Returns the dataset and the
    count of what each step dropped."""
    dropped: dict[str, int] = {}
    inter = dataset.interactions
    profiles = (np.bincount(inter.user, minlength=dataset.n_users) == 0,
                np.bincount(inter.item, minlength=dataset.n_items) == 0) if keep_profiles else None
    if dedup:
        dataset, dropped["duplicates"] = deduplicate(dataset)
    if implicit_threshold is not None:
        dataset, dropped["below_threshold"] = apply_threshold(dataset, float(implicit_threshold))
    if min_user_interactions > 1 or min_item_interactions > 1:
        dataset, dropped["k_core"] = k_core(dataset, int(min_user_interactions), int(min_item_interactions))
    dataset, dropped["users_removed"], dropped["items_removed"] = reindex(dataset, profiles)
    return dataset, dropped


# -- splitting ---------------------------------------------------------------------------------
def split(dataset: Dataset,
          scheme: Literal["random", "loo", "temporal", "kfold", "given", "cold_users", "cold_items"] = "random",
          ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), folds: Annotated[int, Field(ge=2)] = 5,
          fold: NonNegativeInt = 0, valid_share: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1,
          seed: int = 0) -> tuple[Split, dict[str, int]]:
    """Cut the interactions into train/valid/test.

    * ``random``: per user, a seeded random permutation of their interactions. With ``n`` of
      them, valid gets ``floor(n * r_valid)`` and test ``floor(n * r_test)`` (RecBole's rule:
      a share that rounds to 0 but is positive, ``0 < n * r < 1``, still gets one interaction
      as long as the user keeps at least 2 in train; test is served first), train the rest,
      so every user keeps at least one training interaction.
    * ``loo``: temporal leave-one-out; per user the latest interaction is test and the one
      before it valid (equal timestamps: the later row counts as later). Users with fewer
      than 3 interactions keep all of them in train.
    * ``temporal``: one global time cut. With the interactions sorted by time, the timestamps
      at the ``r_train`` and ``r_train + r_valid`` quantiles are the cut points: train is
      strictly before the first, valid before the second, test from it on - so every train
      event precedes every valid event, which precedes every test event.
    * ``kfold``: per user, a seeded random permutation deals the interactions into ``folds``
      folds, round robin from a random fold, so a user's folds differ in size by at most one;
      fold ``fold`` is test, and ``valid_share`` of each user's other interactions (drawn as
      ``random`` draws valid) is valid. Over ``fold = 0 .. folds - 1`` with one seed, every
      interaction is a test interaction exactly once (``recsearch cv`` runs them all).
      ``folds=4``: per user a random quarter held out for test.
    * ``given``: the parts the data came with (``recsearch.data.given.read_given``: three
      files).
    * ``cold_users`` / ``cold_items``: cold start. A seeded random ``r_valid`` share of the
      users (items) with interactions is held out whole for valid and another ``r_test`` share
      for test: all their interactions go to that part, none to train, so a model knows them
      only by their features. With ``cold_items`` each part ranks only its own held-out items
      (``Split.candidates``): against the warm catalogue they would never surface.

    Rows of valid/test whose user or item has no training interaction cannot be scored by a
    model trained on train: they are dropped, counted (``<part>_cold_users``,
    ``<part>_cold_items``) and logged, except the held-out entities of a cold-start scheme.
    Each part is ordered by user, then time.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"data.split.scheme: must be one of {', '.join(SCHEMES)}, got {scheme!r}")
    r_train, r_valid, r_test = check_ratios(ratios)
    check_fold(fold, folds)
    inter = dataset.interactions
    if (scheme == "given") != (inter.part is not None):
        raise ConfigError("data.split.scheme=given takes the parts of a dataset read as three files "
                          "(recsearch.data.given.read_given), and such a dataset takes no other scheme"
                          if scheme == "given" else
                          f"data.split.scheme={scheme}: this dataset came split into train, valid and test "
                          "files; use data.split.scheme=given")
    inter = inter.take(sort_order(inter.user, inter.timestamp))
    rng = np.random.default_rng(seed)
    if scheme == "random":
        part = _random_parts(inter.user, (r_train, r_valid, r_test), rng)
    elif scheme == "loo":
        part = _loo_parts(inter.user)
    elif scheme == "temporal":
        part = _temporal_parts(inter.timestamp, (r_train, r_valid))
    elif scheme == "kfold":
        part = _kfold_parts(inter.user, folds, fold, valid_share, rng)
    elif scheme in COLD:
        part = _cold_parts(getattr(inter, COLD[scheme]), (r_valid, r_test), rng)
    else:
        part, inter = inter.part, replace(inter, part=None)
    train = inter.take(part == 0)
    seen_user = np.bincount(train.user, minlength=dataset.n_users) > 0
    seen_item = np.bincount(train.item, minlength=dataset.n_items) > 0
    dropped: dict[str, int] = {}
    held_out = []
    for index, name in ((1, "valid"), (2, "test")):
        rows_part = inter.take(part == index)
        cold_user = ~seen_user[rows_part.user] & (scheme != "cold_users")
        cold_item = ~cold_user & ~seen_item[rows_part.item] & (scheme != "cold_items")
        dropped[f"{name}_cold_users"] = int(cold_user.sum())
        dropped[f"{name}_cold_items"] = int(cold_item.sum())
        if cold_user.any() or cold_item.any():
            logger.info("%s: dropped %d %s rows of users and %d of items absent from train", dataset.name,
                        dropped[f"{name}_cold_users"], name, dropped[f"{name}_cold_items"])
        held_out.append(rows_part.take(~(cold_user | cold_item)))
    candidates = {name: np.unique(rows.item) for name, rows in zip(("valid", "test"), held_out, strict=True)
                  } if scheme == "cold_items" else {}
    return Split(dataset.with_interactions(train), held_out[0], held_out[1], scheme=scheme,
                 candidates=candidates), dropped


def _cold_parts(entity: np.ndarray, shares: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Part per row: a seeded random ``shares[1]`` of the entities with rows is test (all its
    rows), the next ``shares[0]`` valid, the rest train."""
    entities = rng.permutation(np.unique(entity))
    eps = 1e-9  # as _random_parts: 0.1 * 30 must give 3
    n_test = int(np.floor(len(entities) * shares[1] + eps))
    n_valid = int(np.floor(len(entities) * shares[0] + eps))
    part_of = np.zeros(int(entity.max(initial=-1)) + 1, dtype=np.int8)
    part_of[entities[:n_test]] = 2
    part_of[entities[n_test : n_test + n_valid]] = 1
    return part_of[entity]


def _random_parts(user: np.ndarray, ratios: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Part (0 train, 1 valid, 2 test) per row; ``user`` is sorted."""
    rank = _shuffled_rank(user, rng)
    _, counts = _runs(user)
    n = counts.astype(np.float64)
    eps = 1e-9  # 0.1 * 30 must give 3 however the float product rounds
    n_valid = np.floor(n * ratios[1] + eps).astype(np.int64)
    n_test = np.floor(n * ratios[2] + eps).astype(np.int64)
    n_train = counts - n_valid - n_test
    for share, taken in ((ratios[2], n_test), (ratios[1], n_valid)):
        bump = (n_train > 1) & (n * share > 0) & (n * share < 1)
        taken += bump
        n_train -= bump
    part = np.zeros(len(user), dtype=np.int8)
    per_row_train = np.repeat(n_train, counts)
    per_row_valid = np.repeat(n_valid, counts)
    part[rank >= per_row_train] = 1
    part[rank >= per_row_train + per_row_valid] = 2
    return part


def _kfold_parts(user: np.ndarray, folds: int, fold: int, valid_share: float, rng: np.random.Generator
                 ) -> np.ndarray:
    """Part per row (``user`` sorted): the rows dealt to ``fold`` are test, ``valid_share`` of
    each user's others valid."""
    rank = _shuffled_rank(user, rng)
    _, counts = _runs(user)
    first_fold = np.repeat(rng.integers(0, folds, len(counts)), counts)
    part = np.where((rank + first_fold) % folds == fold, 2, 0).astype(np.int8)
    rest = np.flatnonzero(part == 0)
    part[rest] = _random_parts(user[rest], (1.0 - valid_share, valid_share, 0.0), rng)
    return part


def _shuffled_rank(user: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's position among its user's rows in a seeded random order (``user`` sorted)."""
    shuffled = sort_order(user, rng.integers(0, 1 << 32, len(user)))  # rows of each user in random order
    starts, counts = _runs(user)
    rank = np.empty(len(user), dtype=np.int64)
    rank[shuffled] = np.arange(len(user)) - np.repeat(starts, counts)
    return rank


def _loo_parts(user: np.ndarray) -> np.ndarray:
    """Last row of each user (sorted by user, then time) is test, the one before valid."""
    starts, counts = _runs(user)
    part = np.zeros(len(user), dtype=np.int8)
    eligible = counts >= 3
    ends = starts[eligible] + counts[eligible]
    part[ends - 1] = 2
    part[ends - 2] = 1
    return part


def _temporal_parts(timestamp: np.ndarray, ratios: tuple[float, float]) -> np.ndarray:
    ordered = np.sort(timestamp)
    n = len(ordered)
    positions = [int(np.floor(n * q + 1e-9)) for q in (ratios[0], ratios[0] + ratios[1])]
    cuts = [ordered[p] if p < n else ordered[-1] + 1 for p in positions]  # past the end: no cut
    part = np.zeros(n, dtype=np.int8)
    part[timestamp >= cuts[0]] = 1
    part[timestamp >= cuts[1]] = 2
    return part


def sort_order(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Row order by ``major``, then ``minor``, then original row (stable). One int64 key
    ``major * span + (minor - min)``, sorted in one pass, is several times faster than
    ``np.lexsort``; it is used whenever it cannot overflow (``major >= 0``)."""
    if len(major) == 0:
        return np.zeros(0, dtype=np.int64)
    low = int(minor.min())
    span = int(minor.max()) - low + 1
    if (int(major.max()) + 1) * span < 2**63:
        return np.argsort(major * span + (minor - low), kind="stable")
    return np.lexsort((minor, major))


def _runs(sorted_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start index and length of each run of equal values in a sorted array."""
    if len(sorted_values) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    return starts, np.diff(np.r_[starts, len(sorted_values)])
