"""Biased matrix factorisation: learns planted tastes and ratings, resumes exactly, refuses bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsearch.models import Recommender, kernels
from recsearch.models.base import UnsupportedOperation
from recsearch.models.mf import MatrixFactorization
from recsearch.models.pop import Popularity
from recsearch.training import load_serialized, serialized

FAST = {"dim": 16, "lr": 0.05, "batch_size": 256}


def heldout_percentile(model: Recommender, split) -> float:
    """Mean share of a user's unseen items scored below the user's held-out (valid) item:
    0.5 is chance, 1.0 puts every held-out item first."""
    users = torch.as_tensor(split.valid.user)
    scores = model.seen.mask(model.score(users), users, float("nan"))
    target = scores[torch.arange(len(users)), torch.as_tensor(split.valid.item)]
    below = (scores < target[:, None]).sum(1)
    return (below / (scores.isfinite().sum(1) - 1)).mean().item()


def rmse(model: Recommender, part) -> float:
    predicted = model.predict(part.user, part.item).numpy()
    return float(np.sqrt(np.mean((predicted - part.rating) ** 2)))


@pytest.mark.parametrize("loss", ["bpr", "bce", "mse"])
def test_ranking_losses_learn_planted_tastes(loss, planted_split):
    model = MatrixFactorization(seed=0, device="cpu", loss=loss, negatives=2, **FAST).fit(planted_split.train, 15)
    assert heldout_percentile(model, planted_split) > 0.85


def test_an_epoch_takes_steps_per_epoch_steps(planted_split):
    model = MatrixFactorization(seed=0, device="cpu", **{**FAST, "batch_size": 7})
    model.prepare(planted_split.train)
    steps = []
    model.train_step = lambda index: steps.append(len(index)) or torch.zeros(())
    model.train_epoch()
    assert len(steps) == model.steps_per_epoch and steps[-1] == model.n_examples() - 7 * (len(steps) - 1)
    assert model.n_examples() % 7  # the last batch short: the rounding up is what is checked


def test_ratings_beat_popularity(planted_split):
    mf = MatrixFactorization(seed=0, device="cpu", task="rating", **FAST).fit(planted_split.train, 30)
    pop = Popularity(seed=0, device="cpu", task="rating").fit(planted_split.train)
    assert mf.loss == "mse" and mf.l2 == 0.1  # loss and l2 chosen by the task
    assert rmse(mf, planted_split.valid) < rmse(pop, planted_split.valid) - 0.1


def test_rating_model_scores_are_its_predicted_ratings(planted_split):
    model = MatrixFactorization(seed=0, device="cpu", task="rating", **FAST).fit(planted_split.train, 2)
    users, items = torch.tensor([0, 5, 9]), torch.tensor([3, 3, 40])
    torch.testing.assert_close(model.score(users)[torch.arange(3), items], model.predict(users, items))


def test_bpr_loss_decreases(planted_split):
    model = MatrixFactorization(seed=0, device="cpu", **FAST)
    model.prepare(planted_split.train)
    losses = [model.train_epoch() for _ in range(10)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(b < a for a, b in zip(losses, losses[3:], strict=False)), losses


def test_bundle_scores_identically_and_training_resumes_from_the_checkpoint_state(planted_split, tmp_path):
    model = MatrixFactorization(seed=1, device="cpu", **FAST).fit(planted_split.train, 3)
    checkpoint = serialized(model.state())  # what a sweep's checkpoint holds
    loaded = Recommender.load(model.save(tmp_path / "mf"), device="cpu")
    users = np.arange(model.n_users)
    torch.testing.assert_close(loaded.score(users), model.score(users), rtol=0, atol=0)
    with pytest.raises(UnsupportedOperation, match="checkpoints"):
        loaded.train_epoch()  # a served bundle has no optimiser state
    # optimiser moments and the sampler's generator travel in the checkpoint: the next epochs match exactly
    resumed = MatrixFactorization(seed=1, device="cpu", **FAST)
    resumed.prepare(planted_split.train)
    load_serialized(resumed, checkpoint)
    assert [resumed.train_epoch() for _ in range(2)] == [model.train_epoch() for _ in range(2)]
    torch.testing.assert_close(resumed.score(users), model.score(users), rtol=0, atol=0)
    assert resumed.epochs_done == model.epochs_done == 5


@pytest.mark.parametrize(("params", "message"), [
    ({"loss": "hinge"}, "loss must be one of"),
    ({"dim": -4}, "dim must be >= 1"),
    ({"negatives": 0}, "negatives must be >= 1"),
    ({"task": "rating", "loss": "bpr"}, "task=rating fits ratings with loss mse"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"lr": 0}, "lr must be > 0"),
    ({"l2": -1.0}, "l2 must be >= 0"),
])
def test_bad_hyperparameters_raise_at_construction(params, message):
    with pytest.raises(ValueError, match=message):
        MatrixFactorization(device="cpu", **params)


def test_unknown_task_is_refused():
    with pytest.raises(UnsupportedOperation, match="supports task"):
        MatrixFactorization(task="sequence")


def test_divergence_shows_as_a_non_finite_loss(planted_split):
    model = MatrixFactorization(seed=0, device="cpu", dim=16, lr=1e30, optimizer="sgd", batch_size=64)
    model.prepare(planted_split.train)
    assert not math.isfinite(model.train_epoch())


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("negatives", [1, 3])
def test_the_closed_form_bpr_gradient_is_autograds(negatives, sparse, planted_split, monkeypatch):
    """``backward`` (what BPR trains on) against autograd of ``batch_loss`` on the same batch
    and negatives: the same loss and the same gradients, dense or sparse (large) tables."""
    monkeypatch.setattr("recsearch.models.torch_base.SPARSE_ABOVE", 0 if sparse else 1 << 20)
    model = MatrixFactorization(seed=0, device="cpu", dim=5, negatives=negatives, l2=0.3)
    model.prepare(planted_split.train)
    model.net.double()
    tables = [model.net.user.weight, model.net.item.weight]
    assert [table.sparse for table in (model.net.user, model.net.item)] == [sparse, sparse]
    index, sampling = torch.randperm(len(model.users))[:64], model.generator.get_state()
    expected_loss = model.batch_loss(index)
    expected_loss.backward()
    expected = [table.grad.to_dense().clone() for table in tables]
    model.generator.set_state(sampling)  # the same negatives
    torch.testing.assert_close(model.backward(index), expected_loss.detach(), rtol=1e-12, atol=0)
    for table, gradient in zip(tables, expected, strict=True):
        assert table.grad.is_sparse == sparse
        torch.testing.assert_close(table.grad.to_dense(), gradient, rtol=1e-10, atol=1e-15)
    assert math.isfinite(model.train_epoch())  # and the table's own optimiser steps on it


@pytest.mark.parametrize("negatives", [1, 3])
def test_the_compiled_bpr_gradient_is_the_torch_one(negatives, planted_split, monkeypatch):
    """On the CPU in float32 ``backward`` runs the compiled kernel: the same loss and gradients
    as the torch path on the same batch and negatives, to float32 rounding, and the same training."""
    def trained(compiled: bool) -> tuple[MatrixFactorization, list[torch.Tensor]]:
        monkeypatch.setattr(kernels, "applies", lambda *tables: compiled)
        model = MatrixFactorization(seed=0, device="cpu", dim=8, negatives=negatives, l2=0.3)
        model.prepare(planted_split.train)
        for table in (model.net.user.weight, model.net.item.weight):  # biases too, not their initial 0
            table.data.normal_(generator=torch.Generator().manual_seed(1))
        loss = model.backward(torch.arange(64))
        gradients = [loss, model.net.user.weight.grad.clone(), model.net.item.weight.grad.clone()]
        model.train_epoch()
        return model, gradients

    reference, expected = trained(compiled=False)
    model, actual = trained(compiled=True)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model.net.item.weight, reference.net.item.weight, rtol=1e-4, atol=1e-5)


def test_the_compiled_path_is_taken_on_the_cpu_in_float32_with_dense_tables(planted_split, monkeypatch):
    model = MatrixFactorization(seed=0, device="cpu")
    model.prepare(planted_split.train)
    assert kernels.applies(model.net.user, model.net.item)
    model.net.double()
    assert not kernels.applies(model.net.user, model.net.item)
    monkeypatch.setattr("recsearch.models.torch_base.SPARSE_ABOVE", 0)
    model.prepare(planted_split.train)
    assert not kernels.applies(model.net.user, model.net.item)


@pytest.fixture(scope="module")
def bpr(planted_split) -> MatrixFactorization:
    return MatrixFactorization(seed=0, device="cpu", **FAST).fit(planted_split.train, 8)


def test_fold_in_solves_the_pairwise_least_squares_problem(bpr):
    """The fold-in vector against numpy's least squares over the explicit (history item, any
    item) pairs and the penalty rows: the objective of the module's docstring, built directly."""
    d = bpr.dim
    items = bpr.net.item.weight.detach().double().numpy()
    q, b = items[:, :d], items[:, d]
    users = bpr.net.user.weight.detach().double().numpy()[:, :d]
    seen = bpr.serving_data.seen.tocoo()
    margin = np.mean([users[u] @ (q[i] - q.mean(0)) + b[i] - b.mean() for u, i in zip(seen.row, seen.col, strict=True)])
    history = [4, 9, 9, 17]  # a repeat counts once
    distinct = sorted(set(history))
    n_items, n = len(q), len(distinct)
    # rows sqrt(1/N) (q_i - q_j) · p = sqrt(1/N) (m - b_i + b_j) for every (i, j); sqrt(λ n) p = 0
    pairs = [(i, j) for i in distinct for j in range(n_items)]
    penalty = 2 * bpr.l2 * (1 + np.exp(-margin)) * (1 + np.exp(margin))  # 2 l2 / (σ(m) σ(-m))
    design = np.vstack([np.array([q[i] - q[j] for i, j in pairs]) / np.sqrt(n_items), np.sqrt(penalty * n) * np.eye(d)])
    target = np.concatenate([np.array([margin - b[i] + b[j] for i, j in pairs]) / np.sqrt(n_items), np.zeros(d)])
    expected = np.linalg.lstsq(design, target, rcond=None)[0]
    np.testing.assert_allclose(bpr.fold_in([np.array(history)])[0].numpy(), expected, rtol=1e-6, atol=1e-9)
    scores = bpr.score_history([history, []])
    np.testing.assert_allclose(scores[0].numpy(), q @ expected + b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores[1].numpy(), b, rtol=1e-6)  # no history: the item biases


def test_fold_in_ranks_a_users_own_history_like_the_user(bpr, planted_split):
    """Folding a known user in from its training items recovers most of its trained top items;
    a rating model has no fold-in (events carry no ratings)."""
    users = list(range(20))
    folded = bpr.score_history([bpr.user_history(u) for u in users])
    trained = bpr.score(users)
    agree = [len(set(folded[n].topk(10).indices.tolist()) & set(trained[n].topk(10).indices.tolist())) for n in range(20)]
    assert np.mean(agree) >= 6, agree
    rating = MatrixFactorization(seed=0, device="cpu", task="rating", **FAST)
    assert bpr.folds_in and not rating.folds_in
