"""Users' recent events without Ray or HTTP: the bounded store, validation of POST /events, and
how /recommend/user answers a user with events, family by family (test_serve sends them over HTTP)."""

import argparse
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from recsearch.errors import ConfigError
from recsearch.models.knn import ItemKNN
from recsearch.models.mf import MatrixFactorization
from recsearch.models.pop import Popularity
from recsearch.serving import MAX_CLOCK_SKEW_S, MAX_EVENTS_PER_REQUEST
from recsearch.serving.cli import add_arguments, plan
from recsearch.serving.events import EventLimits, RecentEvents
from recsearch.serving.schemas import (
    EventsRequest,
    HistoryRecommendationRequest,
    UserRecommendationRequest,
)
from recsearch.serving.service import ModelService, ServingError, describe_validation_errors

NOW = 1_700_000_000.0


def served(model, planted_split, tmp_path) -> ModelService:
    model.fit(planted_split.train, 8) if model.iterative else model.fit(planted_split.train)
    return ModelService.load(model.save(tmp_path / model.family), device="cpu")


def items_of(answer) -> list[str]:
    return [scored.item for scored in answer.items]


# -- the store ---------------------------------------------------------------------------------
def test_events_are_held_in_time_order_within_both_bounds():
    store = RecentEvents(EventLimits(max_users=2, max_events_per_user=3))
    assert store.append("a", ["i1", "i2"], [10.0, 5.0]).held == 2
    assert store.history("a") == (["i2", "i1"], [5.0, 10.0])  # by timestamp, not by arrival
    appended = store.append("a", ["i3", "i4"], [7.0, 7.0])
    assert (appended.held, appended.dropped) == (3, 1)
    assert store.history("a")[0] == ["i3", "i4", "i1"]  # the oldest (i2 at 5) dropped; a tie keeps arrival order
    store.append("b", ["i5"], [1.0])
    store.append("a", ["i6"], [11.0])  # a is now the most recently active
    store.append("c", ["i7"], [1.0])  # a third user: b, least recently active, is forgotten
    assert store.recent(["a", "b", "c"]) == {"a": ["i4", "i1", "i6"], "c": ["i7"]}
    assert store.counts() == (2, 4)
    store.resize(EventLimits(max_users=1, max_events_per_user=2))
    assert store.recent(["a", "c"]) == {"c": ["i7"]} and store.counts() == (1, 1)


def test_a_failed_append_leaves_the_history_as_it_was():
    store = RecentEvents()
    store.append("a", ["i1"], [1.0])
    with pytest.raises(ValueError):
        store.append("a", ["i2", "i3"], [2.0])  # one timestamp for two items
    assert store.history("a") == (["i1"], [1.0])


def test_event_limits_are_checked():
    with pytest.raises(ValidationError, match="max_users"):
        EventLimits(max_users=0)
    with pytest.raises(ValidationError, match="max_events_per_user"):
        EventLimits(max_events_per_user=10**6)


# -- validating POST /events ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def pop_service(planted_split, tmp_path_factory) -> ModelService:
    return served(Popularity(), planted_split, tmp_path_factory.mktemp("pop"))


@pytest.mark.parametrize("body, field", [
    ({"user": "u1", "items": []}, "items"),
    ({"user": "u1", "items": ["i1"] * (MAX_EVENTS_PER_REQUEST + 1)}, "items"),
    ({"user": "u1", "items": "i1"}, "items"),
    ({"user": "", "items": ["i1"]}, "user"),
    ({"user": "u1", "items": ["i1"], "timestamps": [-1.0]}, "timestamps.0"),
    ({"user": "u1", "items": ["i1", "i2"], "timestamps": [1.0, math.inf]}, "timestamps.1"),
    ({"user": "u1", "items": ["i1"], "timestamps": ["yesterday"]}, "timestamps.0"),
    ({"user": "u1", "items": ["i1"], "when": [1.0]}, "when"),
])
def test_malformed_events_name_the_field(body, field):
    with pytest.raises(ValidationError) as refused:
        EventsRequest.model_validate(body)
    assert describe_validation_errors(refused.value.errors()).field == field


@pytest.mark.parametrize("body, field", [
    ({"user": "u1", "items": ["i1", "ghost"]}, "items"),
    ({"user": "u1", "items": ["i1", "i2"], "timestamps": [1.0]}, "timestamps"),
    ({"user": "u1", "items": ["i1", "i2"], "timestamps": [1.0, NOW + MAX_CLOCK_SKEW_S + 1]}, "timestamps.1"),
])
def test_events_the_model_cannot_take_get_a_422_naming_the_field(pop_service, body, field):
    with pytest.raises(ServingError) as refused:
        pop_service.check_events(EventsRequest.model_validate(body), NOW)
    assert refused.value.status == 422 and refused.value.field == field


def test_valid_events_default_to_the_time_they_arrive(pop_service):
    request = EventsRequest.model_validate({"user": "new", "items": ["i1", "i2"]})
    assert pop_service.check_events(request, NOW) == (["i1", "i2"], [NOW, NOW])
    timed = EventsRequest.model_validate({"user": "u1", "items": ["i1"], "timestamps": [12]})  # an int is a time too
    assert pop_service.check_events(timed, NOW) == (["i1"], [12.0])


# -- /recommend/user with events ------------------------------------------------------------------
def test_a_history_family_scores_training_items_and_events_natively(planted_split, tmp_path):
    service = served(ItemKNN(k=20), planted_split, tmp_path)
    events = [f"i{i}" for i in range(1, 60, 4)]  # a planted item group other than u3's
    plain = service.recommend_users([UserRecommendationRequest(user="u3", k=5)])[0]
    answer = service.recommend_users([UserRecommendationRequest(user="u3", k=5)], {"u3": events})[0]
    assert plain.recent_events == 0 and answer.recent_events == len(events) and answer.fallback is None
    model = service.model
    history = np.concatenate([model.user_history(3), range(1, 60, 4)])
    scores = model.score_history([history])[0]
    scores[torch.as_tensor(history)] = -math.inf  # seen and event items are left out
    assert items_of(answer) == [f"i{i}" for i in scores.topk(5).indices.tolist()] != items_of(plain)
    # a user unknown to the model: the events alone, as /recommend/history answers them
    new = service.recommend_users([UserRecommendationRequest(user="newcomer", k=5)], {"newcomer": events})[0]
    as_history = service.recommend_histories([HistoryRecommendationRequest(items=events, k=5)])[0]
    assert new.fallback is None and items_of(new) == items_of(as_history)


def test_mf_folds_a_user_with_events_in(planted_split, tmp_path):
    service = served(MatrixFactorization(seed=0, device="cpu", dim=8, lr=0.05, batch_size=256), planted_split, tmp_path)
    plain = service.recommend_users([UserRecommendationRequest(user="u3", k=5)])[0]
    answer = service.recommend_users([UserRecommendationRequest(user="u3", k=5)], {"u3": ["i2", "i6"]})[0]
    history = np.concatenate([service.model.user_history(3), [2, 6]])
    scores = service.model.score_history([history])[0]  # the fold-in of test_mf
    scores[torch.as_tensor(history)] = -math.inf
    assert answer.fallback is None and items_of(answer) == [f"i{i}" for i in scores.topk(5).indices.tolist()]
    assert plain.fallback is None and items_of(plain) != items_of(answer)


def test_other_families_answer_events_by_item_similarity_and_skip_unknown_items(pop_service):
    answer = pop_service.recommend_users([UserRecommendationRequest(user="u3", k=5), UserRecommendationRequest(user="u4")],
                                         {"u3": ["i2", "gone-after-a-swap"]})
    assert answer[0].fallback == "item_similarity" and answer[0].recent_events == 1 and "i2" not in items_of(answer[0])
    assert answer[1].fallback is None and answer[1].recent_events == 0  # no events: the model as before
    only_unknown = pop_service.recommend_users([UserRecommendationRequest(user="u3")], {"u3": ["gone"]})[0]
    assert only_unknown.recent_events == 0 and only_unknown.fallback is None


def test_cli_sets_or_turns_off_the_event_store(tmp_path, planted_split):
    directory = Popularity().fit(planted_split.train).save(tmp_path / "pop")

    def plan_of(*argv):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return plan(parser.parse_args([str(directory), *argv]))

    assert plan_of().event_limits == EventLimits()
    assert plan_of("--events-max-users", "50", "--events-max-per-user", "7").event_limits == EventLimits(
        max_users=50, max_events_per_user=7)
    assert plan_of("--no-events").event_limits is None
    with pytest.raises(ConfigError, match="max_events_per_user"):
        plan_of("--events-max-per-user", "0")
