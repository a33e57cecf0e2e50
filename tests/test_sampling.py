"""The negative sampler shared by MF and NCF: valid, uniform, reproducible, vectorised, unseen."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from recsearch.models import sampling
from recsearch.models.sampling import NegativeSampler

N_USERS, N_ITEMS = 3, 50


@pytest.fixture(autouse=True, params=["dense", "sorted"])
def membership(request, monkeypatch):
    """Every test runs with both membership tests: the dense table and the sorted keys."""
    if request.param == "sorted":
        monkeypatch.setattr(sampling, "DENSE_PAIRS", 0)
    return request.param


def make_sampler(rounds: int = 3) -> NegativeSampler:
    """User 0 has seen nothing, user 1 items 0..4 (10 %), user 2 items 0..39 (80 %)."""
    users = torch.tensor([1] * 5 + [2] * 40)
    items = torch.cat([torch.arange(5), torch.arange(40)])
    return NegativeSampler(users, items, N_USERS, N_ITEMS, rounds=rounds)


def test_the_membership_test_is_the_one_asked_for(membership):
    assert (make_sampler().dense is not None) == (membership == "dense")


def test_dense_and_sorted_membership_draw_the_same_negatives(monkeypatch):
    dense = draw(make_sampler(), user=2)
    monkeypatch.setattr(sampling, "DENSE_PAIRS", 0)
    assert torch.equal(draw(make_sampler(), user=2), dense)


def draw(sampler: NegativeSampler, user: int, n: int = 20_000, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return sampler.sample(torch.full((n // 4,), user), 4, generator)


def test_negatives_are_valid_item_ids_of_the_right_shape():
    negatives = make_sampler().sample(torch.tensor([0, 1, 2]), 7, torch.Generator().manual_seed(1))
    assert negatives.shape == (3, 7) and negatives.dtype == torch.long
    assert int(negatives.min()) >= 0 and int(negatives.max()) < N_ITEMS


def test_negatives_are_uniform_over_the_catalogue():
    counts = np.bincount(draw(make_sampler(), user=0).numpy().ravel(), minlength=N_ITEMS)
    assert chisquare(counts).pvalue > 1e-3, f"counts far from uniform: {counts}"


def test_same_seed_same_negatives_other_seed_others():
    sampler = make_sampler()
    assert torch.equal(draw(sampler, 1, seed=5), draw(sampler, 1, seed=5))
    assert not torch.equal(draw(sampler, 1, seed=5), draw(sampler, 1, seed=6))


def test_seen_items_are_rejected():
    sampler = make_sampler(rounds=8)
    light = draw(sampler, user=1)
    assert not sampler.is_seen(torch.tensor(1), light).any(), "a 10 % user keeps a seen item 1e-9 of the time"
    assert set(light.unique().tolist()) == set(range(5, N_ITEMS)), "every unseen item is drawn"
    # a heavy user keeps a seen one with probability 0.8^(rounds + 1), not 0.8
    for rounds, expected in ((0, 0.8), (3, 0.8**4), (10, 0.8**11)):
        heavy = draw(make_sampler(rounds), user=2)
        assert sampler.is_seen(torch.tensor(2), heavy).float().mean().item() == pytest.approx(expected, abs=0.02)


def test_draws_are_vectorised(monkeypatch):
    """One whole-batch draw whatever the batch size or rejections: no loop per sample or round."""
    calls = []
    randint = torch.randint

    def counting_randint(*args, **kwargs):
        calls.append(args[1])
        return randint(*args, **kwargs)

    monkeypatch.setattr(sampling.torch, "randint", counting_randint)
    sampler = make_sampler(rounds=3)
    for n in (1, 1000):
        calls.clear()
        sampler.sample(torch.full((n,), 2), 5, torch.Generator().manual_seed(0))
        assert calls == [(n, 5, 4)]


def test_a_sampler_without_training_pairs_rejects_nothing():
    sampler = NegativeSampler(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), N_USERS, N_ITEMS)
    assert not sampler.is_seen(torch.tensor([0, 1]), torch.tensor([3, 4])).any()
    assert sampler.sample(torch.tensor([0, 1]), 2, torch.Generator()).shape == (2, 2)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_items must be >= 1"):
        NegativeSampler(torch.tensor([0]), torch.tensor([0]), 1, 0)
    with pytest.raises(ValueError, match="rounds"):
        NegativeSampler(torch.tensor([0]), torch.tensor([0]), 1, 5, rounds=-1)
