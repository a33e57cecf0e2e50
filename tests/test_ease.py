"""EASE against its closed form computed independently, and on the planted dataset."""

from __future__ import annotations

import numpy as np
import pytest

from recsearch.models.ease import EASE


def test_weights_match_the_closed_form(random_binary_dataset):
    dataset, x = random_binary_dataset(8, 6)
    model = EASE(l2=2.0, device="cpu").fit(dataset)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(6))
    expected = -p / np.diag(p)[None, :]  # B_ij = -P_ij / P_jj
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(model.weights.numpy(), expected, atol=1e-5)
    assert np.all(np.diag(model.weights.numpy()) == 0)
    np.testing.assert_allclose(model.score([0, 5]).numpy(), x[[0, 5]] @ expected, atol=1e-5)


def test_learns_the_planted_split(planted_split):
    model = EASE(l2=10.0, device="cpu").fit(planted_split.train)
    test = planted_split.test
    top, _ = model.recommend(test.user, 10)
    hit_rate = (top.numpy() == test.item[:, None]).any(1).mean()
    assert hit_rate > 0.6, f"hit@10 {hit_rate:.2f}; chance is about 10/48"


@pytest.mark.parametrize("params, message", [
    ({"l2": -1.0}, "l2 .* must be > 0"),
    ({"l2": 0.0}, "l2 .* must be > 0"),
    ({"l2": float("nan")}, "l2 .* must be > 0"),
    ({"max_items": 0}, "max_items must be a positive integer"),
])
def test_bad_hyperparameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        EASE(**params)


def test_refuses_catalogues_above_max_items(random_binary_dataset):
    dataset, _ = random_binary_dataset(5, 12)
    with pytest.raises(ValueError, match="12 x 12 .* above max_items=10"):
        EASE(max_items=10, device="cpu").fit(dataset)
