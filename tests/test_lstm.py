"""The LSTM/GRU sequential recommender: its training windows, that it learns the planted
next-item structure, that evaluation reads the validation item before the test item, history
scoring, persistence and input checks; with SASRec, the output layer's rows under amp."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsearch.evaluation import Evaluator
from recsearch.models import sequential
from recsearch.models.base import Recommender
from recsearch.models.lstm import SequentialRecommender
from recsearch.models.sasrec import SASRec
from recsearch.models.sequential import PAD, tail_inputs, time_ordered, training_windows, with_bos

SMALL = dict(dim=32, hidden=64, max_len=8, dropout=0.1, lr=1e-2, batch_size=32, device="cpu")


def held_out_ranks(model: SequentialRecommender, split, part: str) -> np.ndarray:
    """0-based rank of each user's held-out item among the items it has not seen in training
    (nor, for the test part, as its validation item)."""
    held = split.valid if part == "valid" else split.test
    users = torch.arange(split.n_users)
    scores = model.score(users).clone()
    model.seen.mask(scores, users)
    if part == "test":
        scores[torch.as_tensor(split.valid.user), torch.as_tensor(split.valid.item)] = float("-inf")
    scores = scores[torch.as_tensor(held.user)]
    target = scores[torch.arange(len(held)), torch.as_tensor(held.item)]
    return (scores > target[:, None]).sum(1).numpy()


@pytest.fixture(scope="module")
def trained(planted_split):
    return SequentialRecommender(**SMALL, seed=0).fit(planted_split.train, epochs=20)


def test_windows_make_every_position_a_target_exactly_once():
    # user 0: five items with a timestamp tie (kept in original order); user 1: one; user 2: none
    user = np.array([0, 1, 0, 0, 0, 0])
    item = np.array([13, 20, 11, 12, 14, 15])
    stamp = np.array([3, 9, 1, 2, 3, 5])
    items, offsets = time_ordered(user, item, stamp, n_users=3)
    assert items.tolist() == [11, 12, 13, 14, 15, 20] and offsets.tolist() == [0, 5, 6, 6]
    bos = 99
    tokens, token_offsets = with_bos(items, offsets, bos)
    assert tokens.tolist() == [bos, 12, 13, 14, 15, 16, bos, 21, bos]
    windows = training_windows(tokens, token_offsets, max_len=2)
    # aligned at the end: the newest window is full, the oldest short and right-padded
    assert windows.tolist() == [[14, 15, 16], [12, 13, 14], [bos, 12, PAD], [bos, 21, PAD]]
    targets = windows[:, 1:]
    assert sorted(targets[targets != PAD].tolist()) == [12, 13, 14, 15, 16, 21]
    inputs = windows[:, :-1]
    assert (inputs[targets != PAD] != PAD).all()  # every target has a real token before it


def test_tail_inputs_keep_the_last_tokens():
    tokens = np.array([9, 1, 2, 3, 9, 4, 9])
    inputs, lengths = tail_inputs(tokens, np.array([0, 4, 6, 7]), max_len=3)
    assert inputs.tolist() == [[1, 2, 3], [9, 4, PAD], [9, PAD, PAD]]
    assert lengths.tolist() == [3, 2, 1]


def test_learns_the_planted_sequences(trained, planted_split):
    # ~50 candidate items per user: chance puts an item first 2% and in the top 5 10% of the time
    valid = held_out_ranks(trained, planted_split, "valid")
    assert (valid < 1).mean() > 0.8, np.bincount(valid)
    # the test item is two steps ahead of the training history (the validation item is unseen)
    test = held_out_ranks(trained, planted_split, "test")
    assert (test < 5).mean() > 0.6, np.bincount(test)


def test_the_test_item_is_predicted_after_the_validation_item(trained, planted_split, monkeypatch):
    # the evaluator feeds the validation item (the planted walk's step before the test item)
    evaluator = Evaluator("ranking", ["hit", "ndcg"], [1, 5])
    valid = evaluator.evaluate(trained, planted_split, "valid")
    test = evaluator.evaluate(trained, planted_split, "test")
    monkeypatch.setattr(SequentialRecommender, "reads_sequence", False)  # the training state alone
    assert evaluator.evaluate(trained, planted_split, "valid") == valid  # the validation part is unchanged
    two_steps_ahead = evaluator.evaluate(trained, planted_split, "test")
    assert test["hit@1"] > 0.8 and test["hit@1"] > two_steps_ahead["hit@1"] + 0.3, (test, two_steps_ahead)


def test_scores_an_unseen_history(trained, planted):
    split, _, item_group = planted
    group = np.flatnonzero(item_group == 1)
    scores = trained.score_history([group[3:9].tolist(), group[10:12].tolist(), []])
    assert scores.shape == (3, split.n_items)
    assert torch.topk(scores[0], 3).indices.tolist().count(int(group[9])) == 1
    assert torch.topk(scores[1], 3).indices.tolist().count(int(group[12])) == 1
    assert torch.isfinite(scores[2]).all()  # an empty history scores as a sequence start
    # a long history reads only its last max_len items
    long = group.tolist() * 3 + group[:9].tolist()
    assert torch.equal(trained.score_history([long]), trained.score_history([long[-SMALL["max_len"]:]]))


def test_save_and_load_give_identical_scores(trained, planted_split, tmp_path):
    trained.save(tmp_path / "model")
    loaded = Recommender.load(tmp_path / "model", device="cpu")
    assert isinstance(loaded, SequentialRecommender) and loaded.hparams == trained.hparams
    users = torch.arange(planted_split.n_users)
    assert torch.equal(loaded.score(users), trained.score(users))
    assert torch.equal(loaded.score_history([[1, 5, 9]]), trained.score_history([[1, 5, 9]]))


def test_gru_with_l2_trains(planted_split):
    model = SequentialRecommender(**SMALL, cell="gru", layers=2, l2=1e-4, seed=1)
    model.prepare(planted_split.train)
    losses = [model.train_epoch() for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]
    assert (held_out_ranks(model, planted_split, "valid") < 3).mean() > 0.8


@pytest.mark.parametrize("family", [SequentialRecommender, SASRec])
def test_under_amp_on_the_cpu_the_output_layer_meets_few_shapes_and_the_loss_is_unchanged(family, planted_split,
                                                                                         monkeypatch):
    """bf16 on the CPU multiplies through oneDNN, which builds and keeps a kernel for each shape:
    the output layer gets a batch's real targets (a count that varies by batch) padded to a
    multiple of ``TARGET_ROWS_MULTIPLE`` rows, and the padding leaves the loss as it was. Runs
    on any CPU: where bf16 is not native, torch emulates it."""
    model = family(dim=32, max_len=8, dropout=0.0, batch_size=16, seed=0, device="cpu")
    model.prepare(planted_split.train)
    model.amp = True  # whatever this CPU's bf16
    cross_entropy, rows = sequential.F.cross_entropy, []  # rows: of each loss's logits
    monkeypatch.setattr(sequential.F, "cross_entropy", lambda logits, *args, **kwargs: rows.append(len(logits))
                        or cross_entropy(logits, *args, **kwargs))

    def loss(multiple: int) -> float:
        monkeypatch.setattr(sequential, "TARGET_ROWS_MULTIPLE", multiple)
        with model.autocast(), torch.no_grad():
            return float(model.batch_loss(torch.arange(16)))

    def logit_rows_of_an_epoch(multiple: int) -> set[int]:
        monkeypatch.setattr(sequential, "TARGET_ROWS_MULTIPLE", multiple)
        rows.clear()
        model.train_epoch()
        return set(rows)

    multiple = sequential.TARGET_ROWS_MULTIPLE
    assert loss(multiple) == pytest.approx(loss(1), rel=1e-3)
    padded, exact = logit_rows_of_an_epoch(multiple), logit_rows_of_an_epoch(1)
    assert all(n % multiple == 0 for n in padded) and len(padded) < len(exact)


@pytest.mark.parametrize("bad, message", [
    ({"cell": "rnn"}, "cell must be one of lstm, gru, got 'rnn'"),
    ({"dim": 0}, "dim must be an integer >= 1, got 0"),
    ({"hidden": 2.5}, "hidden must be an integer >= 1, got 2.5"),
    ({"layers": 0}, "layers must be an integer >= 1, got 0"),
    ({"max_len": 0}, "max_len must be an integer >= 1, got 0"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
    ({"lr": 0}, "lr must be > 0, got 0"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of .*, got 'lbfgs'"),
    ({"task": "rating"}, "supports task ranking, not 'rating'"),
])
def test_bad_hyperparameters_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        SequentialRecommender(**{**SMALL, **bad})


@pytest.mark.parametrize("histories, message", [
    ([[1, 60]], "unknown item id 60"),
    ([[3], [-1]], "history 1: unknown item id -1"),
    ([[1.5, 2.0]], "integer item ids"),
    ([[[1, 2]]], "flat list"),
    (["12"], "flat list"),
])
def test_bad_histories_raise(trained, histories, message):
    with pytest.raises(ValueError, match=message):
        trained.score_history(histories)
