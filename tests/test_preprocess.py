"""Cleaning (dedup, implicit threshold, k-core, re-indexing), the split schemes (the given
split's files: tests/test_data_readers.py), and ``load_dataset``/``load_split`` over a config."""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import pytest

from recsearch.data import check_config, load_dataset, load_split
from recsearch.data.dataset import Dataset, Interactions
from recsearch.data.preprocess import (
    apply_threshold,
    deduplicate,
    k_core,
    preprocess,
    reindex,
    sort_order,
    split,
)
from recsearch.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def make(make_dataset):
    """``make(users, items, ratings=None, times=None, n_users=None, n_items=None)``: a dataset
    with user groups, item tags and titles, which cleaning must keep aligned with the ids."""
    return partial(make_dataset, features=True)


def test_dedup_keeps_latest_event(make):
    data = make([0, 0, 1, 0], [5, 5, 5, 5], ratings=np.array([1.0, 2.0, 3.0, 4.0]), times=np.array([10, 30, 5, 20]))
    result, dropped = deduplicate(data)
    assert dropped == 2
    np.testing.assert_array_equal(result.interactions.rating, [2.0, 3.0])  # user 0's event at t=30 wins
    tie = make([0, 0], [1, 1], ratings=np.array([1.0, 5.0]), times=np.array([7, 7]))
    assert deduplicate(tie)[0].interactions.rating.tolist() == [5.0]  # equal times: the later row wins


def test_implicit_threshold(make):
    data = make([0, 0, 1, 1], [0, 1, 0, 1], ratings=np.array([5.0, 2.0, 4.0, 3.9]))
    result, dropped = apply_threshold(data, 4)
    assert dropped == 2 and not result.explicit
    assert list(zip(result.interactions.user, result.interactions.item, strict=True)) == [(0, 0), (1, 0)]
    np.testing.assert_array_equal(result.interactions.rating, [1.0, 1.0])


def test_k_core_iterates_until_stable(make):
    # item 2 has one interaction; removing it leaves user 2 with one, which then drops item 1 to one
    users = [0, 0, 1, 1, 2, 2]
    items = [0, 1, 0, 1, 1, 2]
    result, dropped = k_core(make(users, items), min_user=2, min_item=2)
    assert dropped == 2
    counts_u = np.bincount(result.interactions.user)
    counts_i = np.bincount(result.interactions.item)
    assert counts_u[counts_u > 0].min() >= 2 and counts_i[counts_i > 0].min() >= 2


def test_reindex_keeps_ids_features_titles_consistent(make):
    data = make([0, 3, 3], [1, 4, 1], n_users=5, n_items=6)
    result, removed_users, removed_items = reindex(data)
    assert (removed_users, removed_items) == (3, 4)
    assert result.user_ids.tolist() == ["u0", "u3"] and result.item_ids.tolist() == ["i1", "i4"]
    assert result.item_titles.tolist() == ["Title 1", "Title 4"]
    assert result.item_features["tags"].of(0) == ["t1", "all"] and result.item_features["tags"].of(1) == ["<unk>"]
    assert result.user_features["group"].of(1) == ["g1"]
    raw = list(zip(result.user_ids[result.interactions.user], result.item_ids[result.interactions.item], strict=True))
    assert raw == [("u0", "i1"), ("u3", "i4"), ("u3", "i1")]


def test_preprocess_reports_counts(make):
    data = make([0, 0, 1, 2], [0, 0, 1, 1], ratings=np.array([5.0, 5.0, 1.0, 4.0]))
    result, dropped = preprocess(data, dedup=True, implicit_threshold=4)
    assert dropped == {"duplicates": 1, "below_threshold": 1, "users_removed": 1, "items_removed": 0}
    assert result.user_ids.tolist() == ["u0", "u2"]


# -- splits -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def counts_dataset(make):
    """``counts_dataset(per_user, seed=0)``: user u has per_user[u] distinct items of 60, at
    shuffled times."""
    def build(per_user: list[int], seed: int = 0) -> Dataset:
        rng = np.random.default_rng(seed)
        users = np.repeat(np.arange(len(per_user)), per_user)
        items = np.concatenate([rng.permutation(60)[:n] for n in per_user])
        return make(users, items, times=rng.permutation(len(users)), n_items=60)
    return build


def pairs(inter: Interactions) -> set[tuple[int, int]]:
    return set(zip(inter.user.tolist(), inter.item.tolist(), strict=True))


def test_random_split_sizes_follow_the_documented_rounding(make):
    # n=20 -> 16/2/2; 10 -> 8/1/1; 15 -> 13/1/1 (floor); 3 -> 1/1/1 and 2 -> 1/0/1 (bumped to one
    # while train keeps >= 1, test first); 1 -> 1/0/0
    per_user = [20, 10, 15, 3, 2, 1]
    users = np.repeat(np.arange(len(per_user)), per_user)
    full, dropped = split(make(users, np.zeros(len(users), int)), "random", (0.8, 0.1, 0.1), seed=3)
    assert sum(dropped.values()) == 0  # one item, always in train: nothing is cold
    for part, expected in (("train", [16, 8, 13, 1, 1, 1]), ("valid", [2, 1, 1, 1, 0, 0]), ("test", [2, 1, 1, 1, 1, 0])):
        inter = full.train.interactions if part == "train" else getattr(full, part)
        assert np.bincount(inter.user, minlength=len(per_user)).tolist() == expected, part


def test_random_split_is_deterministic_disjoint_and_complete(counts_dataset):
    data = counts_dataset([30] * 40)
    first, dropped = split(data, "random", seed=7)
    again, _ = split(data, "random", seed=7)
    other, _ = split(data, "random", seed=8)
    assert pairs(first.test) == pairs(again.test) and pairs(first.test) != pairs(other.test)
    train, valid, test = pairs(first.train.interactions), pairs(first.valid), pairs(first.test)
    assert not (train & valid or train & test or valid & test)
    cold = sum(dropped.values())
    assert len(train) + len(valid) + len(test) + cold == len(data.interactions)
    assert first.scheme == "random" and first.train.item_titles is data.item_titles


def test_loo_takes_last_two_and_keeps_short_users_in_train(make):
    users = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    items = [0, 1, 2, 3, 0, 2, 1, 2, 3]
    times = [40, 10, 30, 20, 1, 2, 5, 5, 5]  # user 2: equal times, the later row is later
    result, dropped = split(make(users, items, times=np.array(times)), "loo")
    assert sum(dropped.values()) == 0
    assert pairs(result.test) == {(0, 0), (2, 3)} and pairs(result.valid) == {(0, 2), (2, 2)}
    assert {(1, 0), (1, 2)} <= pairs(result.train.interactions)
    train = result.train.interactions
    assert np.all(np.diff(train.user) >= 0)  # parts are ordered by user, then time
    assert np.all(np.diff(train.timestamp)[np.diff(train.user) == 0] >= 0)


def test_temporal_cut_respects_time_and_counts_cold_rows(make, counts_dataset, caplog):
    # 10 events at times 0..9: train = t < 8, valid t = 8, test t = 9 with ratios .8/.1/.1;
    # item 9 appears only at t = 9 and user 3 only at t = 8: both cold, dropped and counted
    users = [0, 1, 2, 0, 1, 2, 0, 1, 3, 0]
    items = [0, 1, 2, 1, 2, 0, 2, 0, 1, 9]
    with caplog.at_level(logging.INFO, logger="recsearch.data"):
        result, dropped = split(make(users, items), "temporal", (0.8, 0.1, 0.1))
    assert result.train.interactions.timestamp.max() == 7
    assert len(result.valid) == 0 and len(result.test) == 0
    assert dropped == {"valid_cold_users": 1, "valid_cold_items": 0, "test_cold_users": 0, "test_cold_items": 1}
    assert "dropped 1 valid rows of users and 0 of items absent from train" in caplog.text
    data = counts_dataset([25] * 30)
    result, _ = split(data, "temporal", (0.7, 0.2, 0.1))
    t_train, t_valid, t_test = result.train.interactions.timestamp, result.valid.timestamp, result.test.timestamp
    assert t_train.max() < t_valid.min() and t_valid.max() < t_test.min()
    assert len(t_train) == 0.7 * len(data.interactions)


def test_kfold_test_parts_partition_every_users_interactions(counts_dataset):
    per_user = [23, 10, 7, 5, 4, 3] * 20  # 120 users drawing from 60 items: no test row is cold
    data = counts_dataset(per_user)
    folds = [split(data, "kfold", folds=5, fold=f, valid_share=0.2, seed=3) for f in range(5)]
    assert all(sum(dropped.values()) == 0 for _, dropped in folds)
    tested = [pairs(result.test) for result, _ in folds]
    everything = pairs(data.interactions)
    assert set().union(*tested) == everything and sum(map(len, tested)) == len(everything)  # each pair once
    for user, n in enumerate(per_user):  # a user's folds differ in size by at most one
        sizes = [sum(u == user for u, _ in fold) for fold in tested]
        assert max(sizes) - min(sizes) <= 1 and sum(sizes) == n
    for result, _ in folds:
        train, valid, test = pairs(result.train.interactions), pairs(result.valid), pairs(result.test)
        assert not (train & valid or train & test or valid & test) and result.scheme == "kfold"
        assert len(train) + len(valid) + len(test) == len(everything)
    # valid: 20% of user 0's 18 or 19 non-test interactions, rounded down as the random scheme does
    assert np.bincount(folds[0][0].valid.user, minlength=120)[0] == 3
    again, _ = split(data, "kfold", folds=5, fold=2, valid_share=0.2, seed=3)
    assert pairs(again.test) == tested[2] and pairs(again.valid) == pairs(folds[2][0].valid)


def test_four_folds_hold_out_a_quarter_per_user(counts_dataset):
    data = counts_dataset([40] * 20)
    result, _ = split(data, "kfold", folds=4, fold=1, valid_share=0.1, seed=0)
    assert np.bincount(result.test.user, minlength=20).tolist() == [10] * 20
    assert np.bincount(result.valid.user, minlength=20).tolist() == [3] * 20  # floor(30 * 0.1)
    with pytest.raises(ConfigError, match=r"data.split.fold: must be below data.split.folds \(4\), got 4"):
        split(data, "kfold", folds=4, fold=4)


SOURCE = {"_target_": "recsearch.data.synthetic.generate"}


@pytest.mark.parametrize("cfg, message", [
    ({"split": {"scheme": "weekly"}},
     "data.split.scheme: Input should be 'random', 'loo', 'temporal', 'kfold', 'given', 'cold_users' or 'cold_items'"),
    ({"split": {"ratios": [0.5, 0.1]}}, "data.split.ratios.2: missing"),
    ({"split": {"ratios": [0.0, 0.5, 0.5]}}, "train > 0"),
    ({"split": {"ratios": [0.8, 0.3, 0.1]}}, "summing to 1"),
    ({"split": {"scheme": "kfold", "folds": 1}}, "data.split.folds: Input should be greater than or equal to 2"),
    ({"split": {"scheme": "kfold", "folds": 3, "fold": 3}}, "data.split.fold: must be below data.split.folds"),
    ({"split": {"valid_share": 1.0}}, "data.split.valid_share: Input should be less than 1"),
    ({"preprocess": {"dedupe": True}}, "data.preprocess.dedupe: unknown key; known: dedup"),
    ({"preprocess": {"min_user_interactions": -1}}, "data.preprocess.min_user_interactions: Input should be greater than or equal to 0"),
    ({"source": {}}, "data.source._target_: None is not a reader"),
    ({"source": {"_target_": "recsearch.data.readers.nothere"}}, "is not a reader that can be imported"),
    ({"source": {**SOURCE, "n_user": 5}}, "data.source.n_user: unknown key; known: n_users"),
    ({"source": {**SOURCE, "n_users": "many"}}, "data.source.n_users: Input should be a valid integer"),
    ({"shape": "long"}, "data.shape: unknown key"),
])
def test_bad_data_config_fails_before_reading(cfg, message):
    with pytest.raises(ConfigError, match=message):
        check_config({"name": "x", "source": SOURCE, **cfg})


def synthetic_cfg(**split_cfg):
    return {"name": "synthetic",
            "source": {"_target_": "recsearch.data.synthetic.generate", "n_users": 300, "n_items": 200,
                       "n_interactions": 6000, "seed": 1},
            "preprocess": {"dedup": True, "min_user_interactions": 5, "min_item_interactions": 5},
            "split": split_cfg or {"scheme": "random", "ratios": [0.8, 0.1, 0.1]}}


def test_load_split_from_config():
    result = load_split(synthetic_cfg(), seed=5, implicit_threshold=None)
    again = load_split(synthetic_cfg(), seed=5, implicit_threshold=None)
    assert pairs(result.test) == pairs(again.test)
    inter = result.train.interactions
    assert np.bincount(inter.user, minlength=result.n_users).min() >= 1  # every user trains
    assert result.train.explicit
    implicit = load_split(synthetic_cfg(scheme="loo"), seed=5, implicit_threshold=4)
    assert not implicit.train.explicit and implicit.scheme == "loo"
    assert set(np.unique(implicit.train.interactions.rating)) == {1.0}


def test_load_dataset_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="no such file"):  # the reader's own error, not Hydra's wrapper
        load_dataset({"name": "a", "source": {"_target_": "recsearch.data.readers.read_table",
                                              "path": str(tmp_path / "a.csv"), "columns": {"user": "u", "item": "i"}}})
    with pytest.raises(ConfigError, match="returned a dict, not a recsearch Dataset"):
        load_dataset({"name": "a", "source": {"_target_": "builtins.dict"}})
    with pytest.raises(ConfigError, match="data.source.folder: unknown key"):
        load_dataset({"name": "a", "source": {"_target_": "recsearch.data.readers.read_atomic", "folder": "x"}})


def test_load_split_on_ml100k(ml100k_dir):
    cfg = {"name": "ml-100k", "source": {"_target_": "recsearch.data.readers.read_atomic",
                                         "directory": str(ml100k_dir), "name": "ml-100k"},
           "preprocess": {"dedup": True}, "split": {"scheme": "random", "ratios": [0.8, 0.1, 0.1]}}
    result = load_split(cfg, seed=42, implicit_threshold=None)
    sizes = result.sizes()
    assert (result.n_users, result.n_items) == (943, 1682)
    assert sizes["train"] == 80_808  # per user n - 2 * floor(n / 10): fixed by the rounding rule
    assert 9_500 < sizes["valid"] <= 9_596 and 9_500 < sizes["test"] <= 9_596  # minus cold items


@pytest.mark.parametrize("offset", [0, 2**62])  # 2**62: the one-key sort would overflow, lexsort is used
def test_sort_order_is_a_stable_two_key_sort(offset):
    rng = np.random.default_rng(0)
    major, minor = rng.integers(0, 50, 2000), rng.integers(0, 20, 2000) + offset
    np.testing.assert_array_equal(sort_order(major, minor), np.lexsort((minor, major)))
