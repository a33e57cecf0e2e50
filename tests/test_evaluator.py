"""The Evaluator on splits: masking of training (and, for test, validation) items, skipped users,
batching, the per-split cache, what a sequence reader's test part is scored from, rating
evaluation and an end-to-end run with Popularity."""

from __future__ import annotations

import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from recsearch.data.dataset import Interactions, Split
from recsearch.errors import ConfigError
from recsearch.evaluation import Evaluator, ranking_metrics
from recsearch.evaluation.evaluator import histories_before_test
from recsearch.models.base import Recommender
from recsearch.models.ease import EASE
from recsearch.models.pop import Popularity
from recsearch.models.sequential import time_ordered

ALL = ["ndcg", "recall", "precision", "f1", "hit", "mrr", "map", "coverage"]
CONF = Path(__file__).resolve().parent.parent / "conf"


class FixedScores(Recommender):
    """Scores and predicted ratings read from a fixed (n_users, n_items) table."""

    family = "fixed"  # not registered: evaluation needs no registry
    tasks = ("ranking", "rating")

    def __init__(self, table, **common):
        super().__init__(device="cpu", **common)
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def fit_prepared(self, epochs=None):
        pass

    def state(self):
        return {"table": self.table}

    def load_state(self, state):
        self.table = state["table"]

    def _score(self, users):
        return self.table[users].clone()

    def _predict(self, users, items):
        return self.table[users, items]


class NextOnTheWalk(Recommender):
    """A sequence reader that needs no training, for the planted data, whose users walk their
    group's items 4 ids apart: after item ``i``, item ``i + 4`` scores highest, then ``i + 5``,
    ``i + 6``, ... (mod n_items), so only the successor of a history's last item ranks first."""

    family = "walk"  # not registered
    reads_sequence = True
    scores_history = True

    def __init__(self, **common):
        super().__init__(device="cpu", **common)

    def fit_prepared(self, epochs=None):
        train = self.train_data.interactions
        items, offsets = time_ordered(train.user, train.item, train.timestamp, self.n_users)
        self.last = items[offsets[1:] - 1]  # every planted user has training items

    def state(self):
        return {}

    def load_state(self, state):
        pass

    def _score(self, users):
        return self._after(self.last[users.numpy()])

    def _score_history(self, histories):
        return self._after(np.array([history[-1] for history in histories]))

    def _after(self, last: np.ndarray) -> torch.Tensor:
        return -torch.as_tensor((np.arange(self.n_items) - last[:, None] - 4) % self.n_items, dtype=torch.float32)


def fitted(model: Recommender, split: Split) -> Recommender:
    return model.fit(split.train)


def dense(part: Interactions, split: Split) -> torch.Tensor:
    return torch.as_tensor(part.matrix(split.n_users, split.n_items).toarray() > 0)


def test_training_and_validation_items_are_masked(make_split):
    # User 0 trained on item 0, validates on item 1, tests on item 2; the model prefers 0 > 1 > 2 > 3.
    # User 1 has no held-out item at all and user 2 only a validation item.
    split = make_split(3, 4, train=[(0, 0), (1, 3), (2, 0)], valid=[(0, 1), (2, 3)], test=[(0, 2)])
    model = fitted(FixedScores([[4.0, 3, 2, 1]] * 3), split)
    evaluator = Evaluator("ranking", ["hit", "mrr"], [1, 2])
    valid = evaluator.evaluate(model, split, "valid")
    # valid: user 0's list is 1, 2, 3 (item 0 masked): hit at rank 1.  User 2's list is 1, 2, 3:
    # item 3 at rank 3, a miss at K <= 2.  User 1 is skipped.
    assert valid == {"hit@1": 0.5, "hit@2": 0.5, "mrr@1": 0.5, "mrr@2": 0.5}
    assert evaluator.last_counts == {"users": 2, "targets": 2}
    # test: user 0's list is 2, 3 (items 0 and 1 masked): hit at rank 1; only user 0 evaluated.
    assert evaluator.evaluate(model, split, "test") == {"hit@1": 1.0, "hit@2": 1.0, "mrr@1": 1.0, "mrr@2": 1.0}
    assert evaluator.last_counts == {"users": 1, "targets": 1}


def test_a_held_out_item_seen_in_training_is_not_a_target(make_split):
    # User 0 re-rated its training item 0 in validation, plus item 2; user 1 only re-rated item 1.
    split = make_split(2, 3, train=[(0, 0), (1, 1)], valid=[(0, 0), (0, 2), (1, 1)], test=[])
    model = fitted(FixedScores([[9.0, 1, 5]] * 2), split)
    evaluator = Evaluator("ranking", ["recall", "hit"], [1])
    assert evaluator.evaluate(model, split, "valid") == {"recall@1": 1.0, "hit@1": 1.0}  # T = 1 (item 2)
    assert evaluator.last_counts == {"users": 1, "targets": 1}
    with pytest.raises(ValueError, match="no user has a test item"):
        evaluator.evaluate(model, split, "test")


@pytest.fixture(scope="module")
def noisy_model(planted_split):
    """Random integer scores (many ties) over the planted split."""
    generator = torch.Generator().manual_seed(0)
    table = torch.randint(0, 4, (planted_split.n_users, planted_split.n_items), generator=generator)
    return fitted(FixedScores(table.float()), planted_split)


@pytest.mark.parametrize("part", ["valid", "test"])
def test_matches_the_dense_computation_for_any_batch_size(planted_split, noisy_model, part):
    split = planted_split
    masked = dense(split.train.interactions, split) | (dense(split.valid, split) if part == "test" else False)
    expected = ranking_metrics(noisy_model.table, dense(getattr(split, part), split), ks=[1, 5, 20, 100], mask=masked)
    for batch_size in (16, 1024):  # 16 leaves a ragged last batch of 8
        got = Evaluator("ranking", ALL, [1, 5, 20, 100], batch_size).evaluate(noisy_model, split, part)
        assert got == pytest.approx(expected, abs=1e-12)


def test_oracle_scores_are_perfect_once_validation_items_are_masked(planted_split):
    split = planted_split
    valid, test = dense(split.valid, split).float(), dense(split.test, split).float()
    # Validation items score highest, test items next: perfect on valid, and perfect on test
    # only because the validation items are masked there.
    model = fitted(FixedScores(2 * valid + test), split)
    evaluator = Evaluator("ranking", ["ndcg", "hit", "mrr"], [1, 10])
    for part in ("valid", "test"):
        assert evaluator.evaluate(model, split, part) == {name: 1.0 for name in evaluator.names}


def test_histories_before_test_merge_training_and_validation_items_by_time(make_dataset):
    # user 0 validated item 5 between its training items 1 and 2, and item 6 at the time of item 2
    # (a tie: training first); user 1 has no validation item, user 2 nothing at all
    train = make_dataset([0, 0, 1, 0], [2, 1, 3, 4], times=[30, 10, 5, 30], n_users=3, n_items=7)
    valid = Interactions(np.array([0, 0]), np.array([6, 5]), np.ones(2), np.array([30, 20]))
    split = Split(train, valid, valid, scheme="random")
    got = histories_before_test(split, np.array([1, 0, 2]))
    assert [history.tolist() for history in got] == [[3], [1, 5, 2, 4, 6], []]


@pytest.mark.parametrize("batch_size", [7, 1024])  # 7 leaves a ragged last batch
def test_a_sequence_reader_is_tested_after_its_validation_items(planted_split, batch_size, monkeypatch):
    # each planted user's test item follows its validation item, which follows its training items
    model = fitted(NextOnTheWalk(), planted_split)
    evaluator = Evaluator("ranking", ["hit"], [1], batch_size)
    assert evaluator.evaluate(model, planted_split, "valid") == {"hit@1": 1.0}
    assert evaluator.evaluate(model, planted_split, "test") == {"hit@1": 1.0}
    # scored from the training state instead, it ranks first the (masked) validation item's
    # neighbour, never the test item, two steps ahead
    monkeypatch.setattr(NextOnTheWalk, "reads_sequence", False)
    assert evaluator.evaluate(model, planted_split, "test") == {"hit@1": 0.0}


def test_other_families_are_tested_from_their_training_state(planted_split):
    # EASE can score histories, but it is no sequence reader: its test part is ranked on score(users)
    model = fitted(EASE(l2=10.0, device="cpu"), planted_split)
    users = torch.arange(planted_split.n_users)
    training_state = fitted(FixedScores(model.score(users)), planted_split)
    histories = fitted(FixedScores(model.score_history(histories_before_test(planted_split, users.numpy()))),
                       planted_split)
    evaluator = Evaluator("ranking", ALL, [1, 5, 10])
    got = evaluator.evaluate(model, planted_split, "test")
    assert got == evaluator.evaluate(training_state, planted_split, "test")
    assert got != evaluator.evaluate(histories, planted_split, "test")


def test_popularity_end_to_end(planted_split):
    model = fitted(Popularity(device="cpu"), planted_split)
    evaluator = Evaluator.for_task(dict(OmegaConf.load(CONF / "task" / "ranking.yaml")), batch_size=50)
    valid = evaluator.evaluate(model, planted_split, "valid")
    assert list(valid) == evaluator.names and "ndcg@10" in valid
    assert evaluator.last_counts == {"users": 120, "targets": 120}  # one validation item per user
    assert all(0.0 <= value <= 1.0 for value in valid.values())
    assert valid["hit@20"] >= valid["hit@10"] >= valid["hit@5"] and valid["hit@20"] > 0
    # Each user's single target: recall = hit, and precision@K = hit / K.
    assert valid["recall@10"] == pytest.approx(valid["hit@10"])
    assert valid["precision@10"] == pytest.approx(valid["hit@10"] / 10)
    assert evaluator.evaluate(model, planted_split, "valid") == valid  # cached masks, same answer


def test_a_new_split_is_never_served_stale_masks(planted_split, noisy_model):
    evaluator = Evaluator("ranking", ALL, [10])
    evaluator.evaluate(noisy_model, planted_split, "valid")
    swapped = replace(planted_split, valid=planted_split.test, test=planted_split.valid)
    expected = Evaluator("ranking", ALL, [10]).evaluate(noisy_model, swapped, "valid")
    assert evaluator.evaluate(noisy_model, swapped, "valid") == expected
    assert expected != Evaluator("ranking", ALL, [10]).evaluate(noisy_model, planted_split, "valid")


def test_pickles_after_use(planted_split, noisy_model):
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    before = evaluator.evaluate(noisy_model, planted_split, "valid")
    clone = pickle.loads(pickle.dumps(evaluator))
    assert clone.evaluate(noisy_model, planted_split, "valid") == before


def test_rating_by_hand(make_split):
    split = make_split(2, 3, train=[(0, 0), (1, 1)], valid=[(0, 1), (1, 2), (1, 0)], test=[],
                       valid_ratings=[4.0, 2.0, 5.0])
    model = fitted(FixedScores([[0.0, 3.5, 0.0], [4.0, 0.0, 3.0]], task="rating"), split)
    evaluator = Evaluator.for_task(dict(OmegaConf.load(CONF / "task" / "rating.yaml")), batch_size=1)
    # predictions 3.5, 3.0, 4.0 against 4, 2, 5: errors -0.5, 1, -1
    got = evaluator.evaluate(model, split, "valid")
    assert got == pytest.approx({"rmse": math.sqrt((0.25 + 1 + 1) / 3), "mse": (0.25 + 1 + 1) / 3,
                                 "mae": (0.5 + 1 + 1) / 3})
    assert evaluator.last_counts == {"pairs": 3}
    with pytest.raises(ValueError, match="test part is empty"):
        evaluator.evaluate(model, split, "test")


def test_popularity_ratings_end_to_end(planted_split):
    model = fitted(Popularity(device="cpu", task="rating"), planted_split)
    got = Evaluator("rating", ["rmse", "mae"]).evaluate(model, planted_split, "test")
    test = planted_split.test
    errors = model.item_means.numpy()[test.item] - test.rating
    assert got == pytest.approx({"rmse": np.sqrt(np.mean(errors**2)), "mae": np.mean(np.abs(errors))})


def test_bad_calls_fail_clearly(planted_split, noisy_model, make_split):
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    with pytest.raises(ValueError, match="part must be 'valid' or 'test'"):
        evaluator.evaluate(noisy_model, planted_split, "train")
    other = make_split(2, 3, train=[(0, 0)], valid=[(0, 1)], test=[(0, 2)])
    with pytest.raises(ValueError, match="the model knows 120 users x 60 items"):
        evaluator.evaluate(noisy_model, other, "valid")
    with pytest.raises(ConfigError, match="unknown ranking metric 'auc'"):
        Evaluator.for_task({"name": "ranking", "metrics": ["auc"], "ks": [10]}, batch_size=64)
    with pytest.raises(ConfigError, match="lacks metrics"):
        Evaluator.for_task({"name": "ranking"}, batch_size=64)
    with pytest.raises(ConfigError, match="positive integers"):
        Evaluator("ranking", ["ndcg"], [0])
    with pytest.raises(ConfigError, match="batch_size"):
        Evaluator("ranking", ["ndcg"], [10], batch_size=0)
