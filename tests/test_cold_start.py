"""Cold start: the cold_users / cold_items splits, the features-only path of deepcf, the
segment-popularity baseline, and profiles checked against a model's vocabulary."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from recsearch.config import load_config
from recsearch.data.dataset import Feature
from recsearch.data.preprocess import split
from recsearch.errors import ConfigError
from recsearch.evaluation import Evaluator
from recsearch.models.base import UnsupportedOperation
from recsearch.models.deepcf import DeepCF
from recsearch.models.pop import Popularity
from recsearch.models.segpop import SegmentPopularity

FEATURES_ONLY = {"dim": 16, "user_id_dropout": 0.5, "item_id_dropout": 0.5, "lr": 0.01, "l2": 0.0, "batch_size": 256}


@pytest.fixture(scope="module")
def cold_users(synthetic_small):
    return split(synthetic_small[0], "cold_users", ratios=(0.8, 0.1, 0.1), seed=1)[0]


@pytest.mark.parametrize("scheme, entity", [("cold_users", "user"), ("cold_items", "item")])
def test_cold_splits_hold_out_whole_entities_and_leak_nothing(synthetic_small, scheme, entity):
    data = synthetic_small[0]
    result, dropped = split(data, scheme, ratios=(0.8, 0.1, 0.1), seed=1)
    train = set(getattr(result.train.interactions, entity).tolist())
    valid, test = (set(getattr(part, entity).tolist()) for part in (result.valid, result.test))
    assert not (train & valid or train & test or valid & test)  # no held-out entity has a training row
    n = len(np.unique(getattr(data.interactions, entity)))
    assert len(valid) == len(test) == int(n * 0.1)
    assert dropped[f"valid_cold_{entity}s"] == dropped[f"test_cold_{entity}s"] == 0  # held out, not dropped
    # every interaction of a held-out entity is in its part, none lost (but rows of the other kind cold)
    for part, held in ((result.valid, valid), (result.test, test)):
        rows = np.isin(getattr(data.interactions, entity), list(held))
        other = "items" if entity == "user" else "users"
        assert len(part) + dropped[f"{'valid' if held is valid else 'test'}_cold_{other}"] == rows.sum()
    if scheme == "cold_items":
        assert set(result.candidates["valid"].tolist()) == valid and set(result.candidates["test"].tolist()) == test
    else:
        assert result.candidates == {}
    # the same seed, the same split
    again = split(data, scheme, ratios=(0.8, 0.1, 0.1), seed=1)[0]
    assert np.array_equal(again.test.user, result.test.user) and np.array_equal(again.test.item, result.test.item)


def test_cold_items_rank_only_their_held_out_items(synthetic_small):
    cold = split(synthetic_small[0], "cold_items", ratios=(0.8, 0.1, 0.1), seed=1)[0]
    model = Popularity().fit(cold.train)
    evaluator = Evaluator("ranking", ["recall"], [20])
    recall = evaluator.evaluate(model, cold, "test")["recall@20"]
    # popularity gives every unseen item 0: a tie, so its recall is what the order of ids gives;
    # the point is that the warm catalogue is out of the ranking, else recall would be exactly 0
    assert recall > 0


def test_features_only_scoring_beats_popularity_on_planted_profiles(cold_users, synthetic_small):
    """The generator plants the profile effect: a user's ``segment`` is its favourite item
    cluster (80% of users). Held-out users are scored from that feature alone. Test NDCG@10
    measured (FEATURES_ONLY, 8 epochs, torch 2.13 CPU; data seeds 3 / 4 / 5, model seeds 0, 1):
      deepcf id dropouts 0.5  0.633 0.646 / 0.524 0.516 / 0.583 0.588
      deepcf id dropouts 0    0.612 0.615 / 0.511 0.515 / 0.592 0.588
      popularity              0.499       / 0.387       / 0.508
      segpop (the feature)    0.634       / 0.522       / 0.594"""
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    model = DeepCF(seed=0, device="cpu", **FEATURES_ONLY).fit(cold_users.train, 8)
    features_only = evaluator.evaluate(model, cold_users, "test")["ndcg@10"]
    popularity = evaluator.evaluate(Popularity().fit(cold_users.train), cold_users, "test")["ndcg@10"]
    assert features_only > popularity + 0.08, (features_only, popularity)
    # a held-out user is scored from its features: the same as its profile given from outside
    user, other = (int(u) for u in np.unique(cold_users.test.user)[:2])
    profile = {"segment": synthetic_small[0].user_features["segment"].of(user)[0]}
    torch.testing.assert_close(model.score([user]), model.score_profiles([model.profile_codes(profile)]))
    # without features every held-out user is the same nobody
    blind = DeepCF(seed=0, device="cpu", **{**FEATURES_ONLY, "use_features": False}).fit(cold_users.train, 2)
    torch.testing.assert_close(blind.score([user]), blind.score([other]))


def test_segment_popularity_scores_a_profile_as_its_segment(planted_split, planted):
    _, user_group, _ = planted
    model = SegmentPopularity().fit(planted_split.train)
    as_known = model.score([0, 1])
    as_profiles = model.score_profiles([model.profile_codes({"group": f"g{user_group[u]}"}) for u in (0, 1)])
    torch.testing.assert_close(as_known, as_profiles)
    unknown_segment = model.score_profiles([model.profile_codes({})])  # no training user has it: popularity
    counts = np.bincount(planted_split.train.interactions.item, minlength=planted_split.n_items)
    assert np.argmax(unknown_segment[0].numpy()) == np.argmax(counts)


def test_smoothed_segments_pool_neighbouring_age_buckets_by_distance(make_dataset):
    """Hand-computed: each segment (age bucket x gender) lends its counts to the asked profile
    with weight exp(-(d / bandwidth)^2 / 2) for d buckets apart in numeric order (which puts "<18"
    beside "18-24", where a string sort puts it last), times ``mismatch`` if the gender differs."""
    ages = ["18-24", "18-24", "25-34", "35-44", "<18", "25-34", "18-24"]
    genders = ["M", "M", "M", "M", "M", "F", "F"]
    users = [0, 0, 1, 2, 2, 3, 4, 4, 5, 6]
    items = [0, 1, 1, 2, 3, 3, 4, 0, 2, 4]
    data = make_dataset(users, items, n_items=5)
    data.user_features = {"age": Feature.from_lists([[a] for a in ages], multi=False),
                          "gender": Feature.from_lists([[g] for g in genders], multi=False)}
    bandwidth, mismatch, shrinkage = 1.0, 0.5, 2.0
    model = SegmentPopularity(bandwidth=bandwidth, mismatch=mismatch, shrinkage=shrinkage).fit(data)
    rank = {"<18": 0, "18-24": 1, "25-34": 2, "35-44": 3}
    seen = np.zeros((7, 5))
    seen[users, items] = 1
    prior = seen.sum(0) / seen.sum()
    for age, gender, known_user in [("18-24", "M", 0), ("<18", "M", 4), ("25-34", "F", 5), ("35-44", "F", None)]:
        weights = np.array([np.exp(-0.5 * ((rank[a] - rank[age]) / bandwidth) ** 2) * (1 if g == gender else mismatch)
                            for a, g in zip(ages, genders, strict=True)])
        pooled = weights @ seen
        expected = (pooled + shrinkage * prior) / (pooled.sum() + shrinkage)
        scored = model.score_profiles([model.profile_codes({"age": age, "gender": gender})])[0]
        np.testing.assert_allclose(scored.numpy(), expected, rtol=1e-5)
        if known_user is not None:  # a training user is scored as its profile
            np.testing.assert_allclose(model.score([known_user])[0].numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(model._pool(model.keys.numpy(), chunk=2), model.pooled)  # chunks change nothing
    assert model.score_profiles([]).shape == (0, 5)
    # both 0: hard segments, the segment's own counts
    hard = SegmentPopularity(shrinkage=shrinkage).fit(data)
    own = seen[[0, 1]].sum(0)  # users 0 and 1: 18-24, M
    np.testing.assert_allclose(hard.score([0])[0].numpy(), (own + shrinkage * prior) / (own.sum() + shrinkage),
                               rtol=1e-5)


def test_deepcf_buckets_share_embeddings_with_their_neighbours(make_dataset):
    """``bandwidth``: an age bucket's vector is the Gaussian-weighted mean of every bucket's
    embedding, by numeric order; training steps the mixed table densely; a profile scores as a
    user without interactions that it describes."""
    ages = ["18-24", "25-34", "<18", "35-44", "18-24", "25-34", "25-34"]  # user 6: no interactions
    data = make_dataset([0, 0, 1, 2, 3, 4, 5, 5], [0, 1, 1, 2, 3, 0, 2, 3], n_users=7, n_items=4)
    data.user_features = {"age": Feature.from_lists([[a] for a in ages], multi=False)}
    model = DeepCF(seed=0, device="cpu", dim=3, bandwidth=1.0, user_id_dropout=1.0, loss="softmax", lr=0.05,
                   batch_size=4).fit(data, 2)
    encoder, feature = model.net.user, data.user_features["age"]
    rank = feature.positions()
    table = encoder.bags[0].weight.detach()
    for code in range(1, len(feature.vocabulary)):
        weights = np.array([0.0] + [np.exp(-0.5 * (rank[code] - rank[other]) ** 2) for other in range(1, len(rank))])
        expected = torch.as_tensor(weights / weights.sum(), dtype=torch.float32) @ table
        torch.testing.assert_close(encoder.from_codes([[[code]]])[0], expected)
    assert not encoder.bags[0].sparse and any(p is encoder.bags[0].weight for p in
                                              model.optimizers["dense"].param_groups[0]["params"])
    torch.testing.assert_close(model.score([6]), model.score_profiles([model.profile_codes({"age": "25-34"})]))
    plain = DeepCF(seed=0, device="cpu", dim=3).fit(data, 1)
    assert plain.net.user.bags[0].sparse and plain.net.user.mix0 is None  # bandwidth 0: as before


@pytest.mark.parametrize("labels, positions", [
    # from_lists sorts the labels as strings: "<18" last; positions are the numeric ranks
    (["18-24", "25-34", "56+", "<18"], {"18-24": 1, "25-34": 2, "56+": 3, "<18": 0}),
    (["1990-1999", "1920-1929"], {"1920-1929": 0, "1990-1999": 1}),
    (["M", "F"], None),                                     # not ranges: no order
    (["18", "18-24"], None),                                # one label not a range: no order
])
def test_range_features_know_their_numeric_order(labels, positions):
    feature = Feature.from_lists([[label] for label in labels], multi=False)
    found = feature.positions()
    if positions is None:
        assert found is None
    else:
        assert np.isnan(found[0])  # UNKNOWN has no place
        assert found[1:].tolist() == [positions[str(label)] for label in feature.vocabulary[1:]]
    with pytest.raises(ValueError) as error:  # an unknown value's error lists the known ones in that order
        feature.codes_of("nope", "profile.age")
    listed = str(error.value).split("known: ")[1].split(", ")
    assert listed == (sorted(labels, key=positions.get) if positions else [str(v) for v in feature.vocabulary[1:]])


@pytest.mark.parametrize("profile, message", [
    ({"segment": "c99"}, "profile.segment: unknown value 'c99'; known: "),
    ({"segmnt": "c1"}, "profile.segmnt: not a feature of this model; known: segment"),
    ({"segment": ["c1", "c2"]}, "profile.segment: expected one string"),
    ({"segment": 3}, "profile.segment: expected one string"),
])
def test_profiles_are_checked_against_the_vocabulary(cold_users, profile, message):
    model = DeepCF(seed=0, device="cpu", dim=4).fit(cold_users.train, 1)
    with pytest.raises(ValueError) as error:
        model.profile_codes(profile)
    assert str(error.value).startswith(message)


def test_new_items_by_features(planted_split, planted):
    _, _, item_group = planted
    model = DeepCF(seed=0, device="cpu", **FEATURES_ONLY).fit(planted_split.train, 10)
    similar = model.similar_to_items([model.item_codes({"genre": ["g2", "all"]})])
    assert (item_group[similar[0].topk(10).indices.numpy()] == 2).all()
    with pytest.raises(ValueError, match=r"features\.genre: unknown value 'x'"):
        model.item_codes({"genre": ["x"]})
    blind = DeepCF(seed=0, device="cpu", dim=4, use_features=False).fit(planted_split.train, 1)
    with pytest.raises(UnsupportedOperation):
        blind.item_codes({"genre": ["g1"]})
    with pytest.raises(UnsupportedOperation):
        Popularity().fit(planted_split.train).profile_codes({"group": "g1"})


def test_deepcf_rates_cold_users_from_features(synthetic_small):
    """task=rating on a cold_users split: held-out users' ratings come from the feature path and
    beat the global mean."""
    cold = split(synthetic_small[0], "cold_users", ratios=(0.8, 0.1, 0.1), seed=1)[0]
    model = DeepCF(seed=0, device="cpu", task="rating", dim=8, user_id_dropout=0.3, lr=0.01).fit(cold.train, 5)
    rmse = Evaluator("rating", ["rmse"]).evaluate(model, cold, "test")["rmse"]
    baseline = float(np.sqrt(np.mean((cold.train.interactions.rating.mean() - cold.test.rating) ** 2)))
    assert rmse < baseline, (rmse, baseline)


@pytest.mark.parametrize("overrides, message", [
    (["model.user_id_dropout=1.5"], "model.user_id_dropout: Input should be less than or equal to 1"),
    (["model=segpop", "model.mismatch=1.5"], "model.mismatch: Input should be less than or equal to 1"),
    (["model=segpop", "model.bandwidth=-1"], "model.bandwidth: Input should be greater than or equal to 0"),
    (["model.loss=bce", "task=rating"], "loss 'bce' does not fit task=rating"),
    (["model.layers=[0]"], "model.layers.0: Input should be greater than 0"),
    (["data.split.scheme=cold_user"], "data.split.scheme: Input should be"),
    (["data.preprocess.keep_profiles=maybe"], "data.preprocess.keep_profiles: Input should be a valid boolean"),
])
def test_bad_cold_start_settings_fail_before_any_data_is_read(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["model=deepcf", "data=synthetic", *overrides])


def test_a_segment_of_unknown_features_is_a_config_error(planted_split):
    with pytest.raises(ConfigError, match="model.segment: 'age' is not a single-valued user feature of 'planted'"):
        SegmentPopularity(segment=["age"]).fit(planted_split.train)
