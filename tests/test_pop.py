"""Popularity against hand computations: ranking by interaction count, and the predicted rating,
each item's mean shrunk towards the global mean by ``shrinkage`` pseudo-ratings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsearch.models.pop import Popularity

# Three users, four items; i3 is never rated.
#        i0 i1 i2 i3
#   u0 [  5  2  .  . ]
#   u1 [  4  .  3  . ]
#   u2 [  5  .  .  . ]
# Counts 3, 1, 1, 0; sums 14, 2, 3, 0; global mean 19 / 5 = 3.8 (neither the scale's midpoint
# nor the mean of the item means, 29 / 9).
USERS = [0, 0, 1, 1, 2]
ITEMS = [0, 1, 0, 2, 0]
RATINGS = np.array([5.0, 2.0, 4.0, 3.0, 5.0])


@pytest.fixture
def ratings(make_dataset):
    return make_dataset(USERS, ITEMS, RATINGS, n_items=4, name="pop")


@pytest.mark.parametrize("shrinkage, expected", [
    # (sum + s * 3.8) / (count + s); an unrated item gets the global mean
    (2.0, [(14 + 7.6) / 5, (2 + 7.6) / 3, (3 + 7.6) / 3, 3.8]),       # 4.32, 3.2, 3.533, 3.8
    (10.0, [(14 + 38) / 13, (2 + 38) / 11, (3 + 38) / 11, 3.8]),     # 4.0, 3.636, 3.727, 3.8
])
def test_predicted_rating_is_the_item_mean_shrunk_to_the_global_mean(ratings, shrinkage, expected):
    model = Popularity(task="rating", shrinkage=shrinkage, device="cpu").fit(ratings)
    predicted = model.predict([0, 1, 2, 0], [0, 1, 2, 3])
    torch.testing.assert_close(predicted, torch.tensor(expected, dtype=torch.float32))


def test_without_shrinkage_a_rated_item_predicts_its_own_mean(ratings):
    model = Popularity(task="rating", shrinkage=0.0, device="cpu").fit(ratings)
    torch.testing.assert_close(model.predict([2, 2, 2], [0, 1, 2]), torch.tensor([14 / 3, 2.0, 3.0]))


def test_the_default_shrinkage_is_ten_pseudo_ratings(ratings):
    assert Popularity().hparams == {"shrinkage": 10.0}
    model = Popularity(task="rating", device="cpu").fit(ratings)
    assert model.predict([0], [0]).item() == pytest.approx(4.0)  # (14 + 10 * 3.8) / (3 + 10)


def test_ranks_by_interaction_count_for_every_user(ratings):
    model = Popularity(device="cpu").fit(ratings)
    torch.testing.assert_close(model.score([0, 2]), torch.tensor([[3.0, 1, 1, 0]] * 2))
    items, _ = model.recommend([2], 3)  # u2 has seen i0: the rest by count (i1 and i2 tie)
    assert items[0, 0].item() in (1, 2) and set(items[0, :2].tolist()) == {1, 2} and items[0, 2].item() == 3


def test_negative_shrinkage_is_refused():
    with pytest.raises(ValueError, match="shrinkage must be >= 0, got -1"):
        Popularity(shrinkage=-1)
