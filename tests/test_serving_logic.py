"""The serving logic without Ray or HTTP: fallbacks, batched answers, errors, settings, CLI checks."""

import argparse
import asyncio
import json
import socket
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import yaml
from pydantic import ValidationError
from starlette.responses import JSONResponse

from recsearch.cli import main
from recsearch.data.dataset import Feature
from recsearch.errors import ConfigError
from recsearch.evaluation import ranked_items
from recsearch.models.base import MODELS, model_class
from recsearch.models.pop import Popularity
from recsearch.serving import MAX_HISTORY, MAX_K, TOKEN_ENV, ingress
from recsearch.serving.cli import add_arguments, check_port_free, is_loopback, plan
from recsearch.serving.fallback import ItemSimilarity, PopularItems
from recsearch.serving.schemas import (
    HistoryRecommendationRequest,
    RatingRequest,
    ServeSettings,
    SimilarItemsRequest,
    UserRecommendationRequest,
)
from recsearch.serving.service import (
    ModelService,
    ServingError,
    check_bearer,
    describe_validation_errors,
    read_description,
    resolve_model_dir,
    without_paths,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ranking_dir(planted_split, tmp_path_factory) -> Path:
    model = Popularity(task="ranking").fit(planted_split.train)
    return model.save(tmp_path_factory.mktemp("models") / "pop-ranking",
                      metadata={"valid": {"ndcg@10": 0.25}, "test": {"ndcg@10": 0.2}, "sweep": "demo"})


@pytest.fixture(scope="module")
def ranking(ranking_dir) -> ModelService:
    return ModelService.load(ranking_dir, device="cpu")


@pytest.fixture(scope="module")
def rating(planted_split, tmp_path_factory) -> ModelService:
    directory = tmp_path_factory.mktemp("models") / "sweep"
    Popularity(task="rating", shrinkage=2.0).fit(planted_split.train).save(directory / "best")
    return ModelService.load(directory, device="cpu")  # a sweep directory: its best/ is served


def user_request(user, **kwargs):
    return UserRecommendationRequest(user=user, **kwargs)


def items_of(answer) -> list[str]:
    return [scored.item for scored in answer.items]


# -- fallbacks -------------------------------------------------------------------------------
def test_item_similarity_is_summed_column_cosine():
    rng = np.random.default_rng(0)
    dense = (rng.random((30, 12)) < 0.3).astype(float)
    dense[:, 5] = 0  # an item nobody touched: similarity 0 to everything
    norms = np.linalg.norm(dense, axis=0)
    cosine = dense.T @ dense / np.maximum(np.outer(norms, norms), 1e-12)
    sims = ItemSimilarity(sp.csr_matrix(dense * 3.0))  # values are ignored: the pattern counts
    got = sims.scores([np.array([0, 2, 2]), np.array([5]), np.array([], dtype=np.int64)])
    np.testing.assert_allclose(got[0], cosine[0] + 2 * cosine[2], atol=1e-12)
    assert not got[1].any() and not got[2].any()


def test_popularity_fallback_orders_by_count_then_id():
    pop = PopularItems(np.array([3, 7, 7, 0, 5]))
    items, counts = pop.top(4)
    assert items.tolist() == [1, 2, 4, 0] and counts.tolist() == [7, 7, 5, 3]
    bonus = pop.tiebreak()
    assert float(bonus.max()) < 1e-9 and bonus[1] > bonus[4] > bonus[0] > bonus[3]


def test_serving_ranks_equal_float64_scores_by_item_id():
    """Serving's keys are float64 (scores plus a popularity bonus below 1e-9): ranked_items keeps
    their precision and orders what still ties by item id, as it does float32 scores."""
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, float("-inf")], [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]],
                          dtype=torch.float64)
    assert ranked_items(scores, 2).tolist() == [[1, 2], [0, 1]]
    assert ranked_items(scores[:, [0, 3, 5]], 3).tolist() == [[0, 1, -1], [0, 1, 2]]
    nudged = torch.tensor([[1.0, 1.0 + 1e-12, 1.0]], dtype=torch.float64)
    assert ranked_items(nudged, 3).tolist() == [[1, 0, 2]]  # a float32 copy would tie all three
    ties = torch.as_tensor(np.random.default_rng(1).integers(0, 4, size=(8, 50)), dtype=torch.float64)
    for k in (1, 7, 50):
        expected = [np.lexsort((np.arange(50), -row))[:k].tolist() for row in ties.numpy()]
        assert ranked_items(ties, k).tolist() == expected


# -- recommendations for known and unknown users ------------------------------------------------
def test_known_user_gets_model_scores_without_seen_items(ranking, planted_split):
    train = planted_split.train
    user = 7
    seen = {f"i{i}" for i in train.interactions.item[train.interactions.user == user]}
    answer = ranking.recommend_users([user_request(f"u{user}", k=10)])[0]
    assert answer.fallback is None and answer.user == "u7" and len(answer.items) == 10
    assert not seen & set(items_of(answer))
    scores = [s.score for s in answer.items]
    assert scores == sorted(scores, reverse=True)
    assert answer.items[0].title == f"Item {answer.items[0].item[1:]}"
    with_seen = ranking.recommend_users([user_request("u7", k=60, exclude_seen=False)])[0]
    assert seen <= set(items_of(with_seen))


def test_unknown_user_gets_popularity_marked_as_such(ranking, planted_split):
    counts = np.bincount(planted_split.train.interactions.item, minlength=60)
    answer = ranking.recommend_users([user_request("stranger", k=5)])[0]
    assert answer.fallback == "popularity"
    assert [s.score for s in answer.items] == sorted(counts, reverse=True)[:5]


def test_a_batch_answers_each_request_as_if_alone(ranking, planted_split):
    requests = [user_request("u1", k=3), user_request("nobody", k=2), user_request("u2", k=7, exclude_seen=False),
                user_request("u1", k=MAX_K)]
    batched = ranking.recommend_users(requests)
    alone = [ranking.recommend_users([r])[0] for r in requests]
    assert [a.model_dump() for a in batched] == [a.model_dump() for a in alone]
    seen_by_u1 = int((planted_split.train.interactions.user == 1).sum())
    assert [len(a.items) for a in batched] == [3, 2, 7, 60 - seen_by_u1]  # k capped to the unseen items


# -- history, similar items, ratings ------------------------------------------------------------
def test_history_recommends_the_group_of_its_items(ranking, planted):
    split, _, item_group = planted
    history = ["i0", "i4", "i8"]
    answer = ranking.recommend_histories([HistoryRecommendationRequest(items=history, k=5)])[0]
    assert answer.fallback == "item_similarity"
    recommended = [int(i[1:]) for i in items_of(answer)]
    assert not set(history) & set(items_of(answer))
    assert (item_group[recommended] == 0).all()
    again = ranking.recommend_histories([HistoryRecommendationRequest(items=history, k=60, exclude_seen=False)])[0]
    assert set(history) <= set(items_of(again))


def test_history_errors_stay_with_their_request(ranking):
    answers = ranking.recommend_histories([
        HistoryRecommendationRequest(items=["i1", "ghost", "spook"], k=3),
        HistoryRecommendationRequest(items=[], k=3),
        HistoryRecommendationRequest(items=["i1"], k=3),
    ])
    assert isinstance(answers[0], ServingError) and answers[0].status == 422 and answers[0].field == "items"
    assert "'ghost', 'spook'" in answers[0].message
    assert answers[0].body() == {"error": f"items: {answers[0].message}", "field": "items"}
    assert answers[1].fallback == "popularity" and len(answers[1].items) == 3
    assert answers[2].fallback == "item_similarity"


def test_history_with_no_overlap_falls_back_to_popularity(planted_split, tmp_path):
    train = planted_split.train
    keep = train.interactions.item != 3  # item 3 has no training interactions at all
    model = Popularity().fit(train.with_interactions(train.interactions.take(keep)))
    service = ModelService.load(model.save(tmp_path / "m"), device="cpu")
    answer = service.recommend_histories([HistoryRecommendationRequest(items=["i3"], k=4)])[0]
    assert answer.fallback == "popularity" and "i3" not in items_of(answer) and len(answer.items) == 4


def test_models_that_score_histories_answer_them_themselves(ranking, planted_split):
    class NextItem(Popularity):
        """Scores the item after the last one; has nothing to say after item 0."""
        scores_history = True

        def score_history(self, histories):
            scores = torch.zeros(len(histories), self.n_items)
            for row, history in enumerate(histories):
                if history[-1] != 0:
                    scores[row, (history[-1] + 1) % self.n_items] = 1.0
            return scores

    model = NextItem()
    model.prepare(planted_split.train)
    model.fit_prepared()
    service = ModelService(model, ranking.directory, ranking.description)
    answers = service.recommend_histories([HistoryRecommendationRequest(items=["i9", "i4"], k=2),
                                           HistoryRecommendationRequest(items=[], k=2),
                                           HistoryRecommendationRequest(items=["i4", "i0"], k=2)])
    assert answers[0].fallback is None and answers[0].items[0].item == "i5"
    assert answers[1].fallback == "popularity"
    assert answers[2].fallback == "popularity"  # a constant row ranks nothing
    popular = items_of(service.recommend_histories([HistoryRecommendationRequest(items=[], k=4)])[0])
    assert items_of(answers[2]) == [i for i in popular if i not in ("i4", "i0")][:2]


def test_similar_items_share_users_and_exclude_the_item(ranking, planted):
    _, _, item_group = planted
    answers = ranking.similar_items([SimilarItemsRequest(item="i2", k=5), SimilarItemsRequest(item="zz")])
    similar = items_of(answers[0])
    assert "i2" not in similar and len(similar) == 5
    assert (item_group[[int(i[1:]) for i in similar]] == item_group[2]).all()
    assert all(s.score > 0 for s in answers[0].items)
    assert isinstance(answers[1], ServingError) and answers[1].field == "item"


# -- new users by their profile, new items by their features ----------------------------------------
@pytest.fixture(scope="module")
def profiled(planted_split, tmp_path_factory) -> ModelService:
    model = model_class("deepcf")(seed=0, device="cpu", dim=16, lr=0.01, l2=0.0, user_id_dropout=0.5,
                                  item_id_dropout=0.5, batch_size=256)
    return ModelService.load(model.fit(planted_split.train, 10).save(tmp_path_factory.mktemp("models") / "deepcf"),
                             device="cpu")


def test_a_new_user_is_answered_from_the_profile(profiled, ranking, planted):
    _, _, item_group = planted
    requests = [user_request("newcomer", k=5, profile={"group": "g3"}), user_request("u1", k=5, profile={"group": "g3"}),
                user_request("typo", k=5, profile={"group": "g9"}), user_request("stranger", k=5)]
    new, known, bad, plain = profiled.recommend_users(requests)
    assert new.fallback == "profile" and (item_group[[int(i[1:]) for i in items_of(new)]] == 3).all()
    assert known.fallback is None  # a known user is scored as such, the profile ignored
    assert known == profiled.recommend_users([user_request("u1", k=5)])[0]
    assert isinstance(bad, ServingError) and bad.status == 422 and bad.field == "profile.group"
    assert "unknown value 'g9'" in bad.message and bad.body()["error"].startswith("profile.group: ")
    assert plain.fallback == "popularity"
    # a model without a feature path ignores the profile: popularity, as for any unknown user
    assert ranking.recommend_users([requests[0]])[0].fallback == "popularity"


def test_a_user_kept_for_the_profile_alone(planted_split, planted, tmp_path):
    """A user of the data with features but no interaction (``keep_profiles``): the feature path
    answers it, a model without one answers with popularity rather than an untrained vector."""
    _, _, item_group = planted
    train = planted_split.train
    group = train.user_features["group"]
    data = replace(train, user_ids=np.append(train.user_ids, "profile-only"),
                   user_features={"group": Feature.from_lists([*(group.of(u) for u in range(train.n_users)), ["g1"]],
                                                              multi=False)})
    features = model_class("deepcf")(seed=0, device="cpu", dim=16, lr=0.01, l2=0.0, user_id_dropout=0.5,
                                     batch_size=256).fit(data, 10)
    answer = ModelService.load(features.save(tmp_path / "deepcf"), device="cpu").recommend_users(
        [user_request("profile-only", k=5)])[0]
    assert answer.fallback == "profile" and (item_group[[int(i[1:]) for i in items_of(answer)]] == 1).all()
    blind = model_class("mf")(seed=0, device="cpu", dim=8).fit(data, 1)
    answer = ModelService.load(blind.save(tmp_path / "mf"), device="cpu").recommend_users(
        [user_request("profile-only", k=5)])[0]
    assert answer.fallback == "popularity"


@pytest.mark.parametrize("profile, field", [
    ({"group": "g9"}, "profile.group"),
    ({"grup": "g1"}, "profile.grup"),
    ({"group": ["g1", "g2"]}, "profile.group"),
    ({"group": 3}, "profile.group"),
    ({"group": None}, "profile.group"),
    ({"group": "g" * 10_000}, "profile.group"),
])
def test_bad_profiles_are_422s_naming_the_feature(profiled, profile, field):
    answer = profiled.recommend_users([user_request("newcomer", profile=profile)])[0]
    assert isinstance(answer, ServingError) and answer.status == 422 and answer.field == field


@pytest.mark.parametrize("body, field", [
    ({"user": "x", "profile": ["g1"]}, "profile"),
    ({"user": "x", "profile": "g1"}, "profile"),
    ({"user": "x", "profile": {f"f{n}": "v" for n in range(65)}}, "profile"),
])
def test_malformed_profiles_are_refused_by_the_schema(body, field):
    with pytest.raises(ValidationError) as invalid:
        UserRecommendationRequest.model_validate(body)
    assert describe_validation_errors(invalid.value.errors()).field == field


def test_new_items_are_ranked_with_the_catalogue(profiled, ranking, planted):
    _, user_group, _ = planted
    own, other = f"g{user_group[1]}", f"g{(user_group[1] + 1) % 4}"
    new_items = {"new-own": {"genre": [own, "all"]}, "new-other": {"genre": [other, "all"]}}
    known, by_profile = profiled.recommend_users([user_request("u1", k=60, new_items=new_items),
                                                  user_request("x", k=60, profile={"group": own}, new_items=new_items)])
    for answer in (known, by_profile):
        ranked = items_of(answer)
        assert ranked.index("new-own") < ranked.index("new-other")  # k covers every unseen item
        assert [s.score for s in answer.items] == sorted((s.score for s in answer.items), reverse=True)
    catalogue = [scored for scored in known.items if not scored.item.startswith("new-")]
    assert catalogue == profiled.recommend_users([user_request("u1", k=60)])[0].items[: len(catalogue)]
    popular = profiled.recommend_users([user_request("stranger", k=5, new_items=new_items)])[0]
    assert popular.fallback == "popularity" and not {"new-own", "new-other"} & set(items_of(popular))
    for service, body, status, field in (
            (profiled, {"i1": {"genre": "g1"}}, 422, "new_items.i1"),
            (profiled, {"n": {"genre": ["g1", "zz"]}}, 422, "new_items.n.genre"),
            (profiled, {"n": {"colour": "red"}}, 422, "new_items.n.colour"),
            (ranking, {"n": {"genre": "g1"}}, 409, "new_items")):
        answer = service.recommend_users([user_request("u1", new_items=body)])[0]
        assert isinstance(answer, ServingError) and (answer.status, answer.field) == (status, field), answer


def test_similar_items_of_a_new_item_by_its_features(profiled, ranking, planted):
    _, _, item_group = planted
    good, bad = profiled.similar_items([SimilarItemsRequest(features={"genre": ["g1", "all"]}, k=5),
                                        SimilarItemsRequest(features={"genre": "nope"})])
    assert good.item is None and (item_group[[int(i[1:]) for i in items_of(good)]] == 1).all()
    assert isinstance(bad, ServingError) and bad.status == 422 and bad.field == "features.genre"
    refused = ranking.similar_items([SimilarItemsRequest(features={"genre": ["g1"]})])[0]
    assert isinstance(refused, ServingError) and refused.status == 409 and refused.field == "features"
    for body in ({"k": 3}, {"item": "i1", "features": {"genre": "g1"}}):
        with pytest.raises(ValidationError, match="exactly one of item"):
            SimilarItemsRequest.model_validate(body)


def test_rating_prediction(rating, ranking):
    predicted = rating.predict_rating(RatingRequest(user="u3", item="i5"))
    expected = rating.model.predict(torch.tensor([3]), torch.tensor([5]))
    assert predicted.rating == pytest.approx(float(expected[0]))
    with pytest.raises(ServingError) as refused:
        ranking.predict_rating(RatingRequest(user="u3", item="i5"))
    assert refused.value.status == 409 and "ranking" in refused.value.message
    for request, field in ((RatingRequest(user="nobody", item="i5"), "user"), (RatingRequest(user="u3", item="x"), "item")):
        with pytest.raises(ServingError) as unknown:
            rating.predict_rating(request)
        assert unknown.value.status == 422 and unknown.value.field == field


def test_model_info_comes_from_model_json(ranking, rating, ranking_dir):
    info = ranking.info()
    assert info.family == "pop" and info.task == "ranking" and info.hparams == {"shrinkage": 10.0}
    assert info.metadata["sweep"] == "demo" and info.metadata["valid"] == {"ndcg@10": 0.25}
    assert info.saved_at and info.n_users == 120 and info.n_items == 60 and info.path == str(ranking_dir)
    assert rating.info().task == "rating" and rating.info().path.endswith("best")
    assert ranking.model_id != rating.model_id


@pytest.mark.parametrize("family", sorted(MODELS))
def test_every_registered_family_can_be_served(family, planted_split, tmp_path):
    """Whatever the family, a saved model loads into the service and answers every endpoint."""
    cls = model_class(family)
    for task in cls.tasks:
        model = cls(seed=0, device="cpu", task=task).fit(planted_split.train, epochs=1)
        service = ModelService.load(model.save(tmp_path / task), device="cpu")
        assert len(service.recommend_users([user_request("u0", k=5)])[0].items) == 5
        from_history = service.recommend_histories([HistoryRecommendationRequest(items=["i0"], k=5)])[0]
        assert from_history.items
        assert from_history.fallback == (None if model.scores_history or model.folds_in else "item_similarity")
        if task == "rating":
            assert np.isfinite(service.predict_rating(RatingRequest(user="u0", item="i1")).rating)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_bundle_holds_only_what_inference_reads(family, planted_split, tmp_path):
    """No ratings, timestamps or interaction order, features only for a model that reads them,
    no optimiser: id maps, seen items, popularity and titles, and the model's own serving state."""
    cls = model_class(family)
    train = planted_split.train
    for task in cls.tasks:
        for use_features in ((False, True) if family in ("ncf", "deepcf") else (False,)):
            extra = {"use_features": use_features} if family in ("ncf", "deepcf") else {}
            model = cls(seed=0, device="cpu", task=task, **extra).fit(train, epochs=1)
            directory = model.save(tmp_path / f"{task}-{use_features}")
            with np.load(directory / "data" / "serving.npz", allow_pickle=False) as bundle:
                arrays = {name: bundle[name] for name in bundle.files}
            features = {f"{kind}.{name}.{part}" for kind, feats in (("user", train.user_features), ("item", train.item_features))
                        for name in feats for part in ("vocabulary", "offsets", "values")}
            expected = {"user_ids", "item_ids", "seen.indptr", "seen.indices", "item_counts", "item_titles"}
            assert set(arrays) == expected | (features if model.reads_features else set())
            seen = sp.csr_matrix((np.ones(len(arrays["seen.indices"])), arrays["seen.indices"], arrays["seen.indptr"]),
                                 shape=(train.n_users, train.n_items))
            assert (seen != (train.matrix() > 0)).nnz == 0
            assert arrays["item_counts"].tolist() == np.bincount(train.interactions.item, minlength=train.n_items).tolist()
            assert set((directory / "data").iterdir()) == {directory / "data" / "serving.npz", directory / "data" / "serving.json"}
            state = torch.load(directory / "weights.pt", weights_only=True)
            assert not {"optimizers", "generator", "epochs_done"} & set(state)
            # only a KNN rating model reads ratings at inference (Resnick's formula)
            assert ("ratings" in state) == (task == "rating" and family in ("itemknn", "userknn"))


def test_a_format_1_directory_still_loads(planted_split, tmp_path):
    """Written before the bundle: the whole training set in data/, the optimiser in weights.pt."""
    model = model_class("mf")(seed=0, device="cpu", dim=8).fit(planted_split.train, epochs=1)
    description = json.loads((model.save(tmp_path / "bundle") / "model.json").read_text())
    old = tmp_path / "old"
    planted_split.train.save(old / "data")
    torch.save(model.state(), old / "weights.pt")
    (old / "model.json").write_text(json.dumps({**description, "format": 1}))
    service = ModelService.load(old, device="cpu")
    users = np.arange(planted_split.n_users)
    torch.testing.assert_close(service.model.score(users), model.score(users), rtol=0, atol=0)
    assert service.recommend_users([user_request("u3", k=3)])[0].fallback is None


# -- requests, errors, auth ---------------------------------------------------------------------
@pytest.mark.parametrize("body, field", [
    ({"user": "u1", "k": 0}, "k"),
    ({"user": "u1", "k": MAX_K + 1}, "k"),
    ({"user": "u1", "k": "5"}, "k"),
    ({"user": "u1", "k": 5.0}, "k"),
    ({"user": "u1", "exclude_seen": "yes"}, "exclude_seen"),
    ({"user": 1}, "user"),
    ({"user": ""}, "user"),
    ({}, "user"),
    ({"user": "u1", "kk": 3}, "kk"),
])
def test_bad_user_requests_name_the_field(body, field):
    with pytest.raises(ValidationError) as invalid:
        UserRecommendationRequest.model_validate(body)
    described = describe_validation_errors(invalid.value.errors())
    assert described.field == field and described.error.startswith(f"{field}: ")


def test_oversized_history_is_refused():
    with pytest.raises(ValidationError) as invalid:
        HistoryRecommendationRequest.model_validate({"items": ["i1"] * (MAX_HISTORY + 1)})
    assert describe_validation_errors(invalid.value.errors()).field == "items"


def test_fastapi_body_errors_are_described():
    assert describe_validation_errors([{"type": "missing", "loc": ("body",), "msg": "Field required"}]).model_dump() == {
        "error": "body: a JSON object is required", "field": "body"}
    broken = describe_validation_errors([{"type": "json_invalid", "loc": ("body", 7), "msg": "JSON decode error",
                                          "ctx": {"error": "Expecting value"}}])
    assert broken.field == "body" and "not valid JSON (Expecting value)" in broken.error
    nested = describe_validation_errors([{"type": "string_too_short", "loc": ("body", "items", 2), "msg": "too short"}])
    assert nested.field == "items.2"


def test_bearer_token():
    check_bearer(None, None)  # no token configured: open
    check_bearer("anything", "")
    check_bearer("s3cret", "s3cret")
    for presented in (None, "wrong", "s3cret "):
        with pytest.raises(ServingError) as refused:
            check_bearer(presented, "s3cret")
        assert refused.value.status == 401 and refused.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize("root_path", ["", "/secured"])
def test_the_token_guard_answers_before_the_application(monkeypatch, root_path):
    """Everything but /health gets a 401 without the token, the application never reached
    (so no body is read, no 422 and no docs leak); with the token, or with none configured,
    requests pass untouched."""
    from recsearch.serving.app import BearerTokenGuard

    reached: list[str] = []

    async def application(scope, receive, send):
        reached.append(scope["path"])
        await JSONResponse({"ok": True})(scope, receive, send)

    def call(path: str, token: str | None, **headers) -> httpx.Response:
        monkeypatch.setenv(TOKEN_ENV, token or "")
        transport = httpx.ASGITransport(app=BearerTokenGuard(application), root_path=root_path)

        async def post() -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                return await client.post(f"{root_path}{path}", content=b"{not json", headers=headers)

        return asyncio.run(post())

    for path in ("/recommend/user", "/docs", "/openapi.json", "/redoc", "/nowhere", "/health/x", "/"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            refused = call(path, "s3cret", **headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert refused.json()["error"].startswith("missing or wrong bearer token")
    assert reached == []
    assert call("/health", "s3cret").status_code == 200
    assert call("/recommend/user", "s3cret", Authorization="Bearer s3cret").status_code == 200
    assert call("/recommend/user", "s3cret", Authorization="bearer  s3cret ").status_code == 200
    assert call("/docs", None).status_code == 200  # no token configured: open
    assert reached == [f"{root_path}{p}" for p in ("/health", "/recommend/user", "/recommend/user", "/docs")]


def test_health_shows_no_paths():
    error = "ConfigError: /srv/models/x is not a model directory (no model.json), nor a sweep directory with best/model.json"
    assert without_paths(error) == ("ConfigError: <path> is not a model directory (no model.json), "
                                    "nor a sweep directory with best/model.json")
    assert without_paths("FileNotFoundError: [Errno 2] No such file: '/a/b c/w.pt' or ~/m") == \
        "FileNotFoundError: [Errno 2] No such file: '<path>' or <path>"


# -- model directories and settings --------------------------------------------------------------
def test_model_directories(ranking_dir, tmp_path):
    assert resolve_model_dir(ranking_dir) == ranking_dir
    sweep = tmp_path / "sweep"
    (sweep / "best").mkdir(parents=True)
    (sweep / "best" / "model.json").write_text((ranking_dir / "model.json").read_text())
    assert resolve_model_dir(sweep) == sweep / "best"
    trained = tmp_path / "runs" / "ease"  # what `recsearch train out=runs/ease` writes
    (trained / "model").mkdir(parents=True)
    (trained / "model" / "model.json").write_text((ranking_dir / "model.json").read_text())
    assert resolve_model_dir(trained) == trained / "model"
    with pytest.raises(ConfigError, match="not a model directory"):
        resolve_model_dir(tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.mkdir()
    for text, match in (("{not json", "cannot read"), ('{"format": 99}', "format"),
                        ('{"format": 1, "family": "nope"}', "unknown model family")):
        (broken / "model.json").write_text(text)
        with pytest.raises(ConfigError, match=match):
            read_description(broken)


def test_serve_settings():
    assert ServeSettings(model_dir="/m").max_batch_size >= 1
    for bad in ({"model_dir": "relative/model"}, {"model_dir": "/m", "max_batch_size": 0},
                {"model_dir": "/m", "batch_wait_timeout_s": -1}, {"model_dir": "/m", "typo": 1}, {}):
        with pytest.raises(ValidationError):
            ServeSettings.model_validate(bad)


def test_shipped_serve_config_is_valid():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    assert config["http_options"]["host"] == "127.0.0.1"
    app = config["applications"][0]
    assert app["import_path"] == "recsearch.serving.app:app"
    deployment = app["deployments"][0]
    settings = ServeSettings.model_validate(deployment["user_config"])
    assert deployment["max_ongoing_requests"] >= settings.max_batch_size


def test_serve_config_and_cluster_start_serve_behind_haproxy():
    """The ingress variables go where Ray starts: the Serve config's instructions, every node's
    `ray start` in cluster.yaml."""
    wanted = [f"{name}={value}" for name, value in ingress.HAPROXY_MODE.items()]
    config_header = [line for line in (ROOT / "serve" / "config.yaml").read_text().splitlines() if line.startswith("#")]
    assert any(all(variable in line for variable in wanted) for line in config_header)
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        starts = [command for command in commands if "ray start" in command]
        assert starts and all(variable in command for command in starts for variable in wanted)


# -- the command line, all checked before Ray starts ----------------------------------------------
def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_plan(ranking_dir):
    target = plan(parse(str(ranking_dir), "--replicas", "2", "--max-replicas", "4", "--max-batch-size", "8"))
    assert target.settings.model_dir == str(ranking_dir) and target.settings.max_batch_size == 8
    assert (target.replicas, target.max_replicas, target.num_cpus) == (2, 4, 1.0)
    for argv, match in ((["--replicas", "0"], "--replicas"),
                        (["--replicas", "3", "--max-replicas", "2"], "--max-replicas"),
                        (["--max-batch-size", "0"], "max_batch_size"), (["--port", "70000"], "--port"),
                        (["--num-gpus", "-1"], "--num-gpus")):
        with pytest.raises(ConfigError, match=match):
            plan(parse(str(ranking_dir), *argv))


def test_cli_ingress_choice(ranking_dir):
    assert plan(parse(str(ranking_dir))) and parse(str(ranking_dir)).haproxy
    assert not parse(str(ranking_dir), "--no-haproxy").haproxy
    with pytest.raises(ConfigError, match="cluster's ingress"):
        plan(parse(str(ranking_dir), "--no-haproxy", "--address", "auto"))
    environment = ingress.haproxy_environment()
    assert environment["RAY_SERVE_ENABLE_HA_PROXY"] == environment["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    ports = [int(environment[name]) for name in ingress.HAPROXY_PORTS]  # not Ray's fixed 8404, 9101, 8500
    assert all(0 < port < 65536 for port in ports) and not {8404, 9101, 8500} & set(ports)
    assert ingress.default_environment() == {"RAY_SERVE_ENABLE_HA_PROXY": None, "RAY_SERVE_THROUGHPUT_OPTIMIZED": None}


def test_loopback_hosts():
    assert all(is_loopback(host) for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(host) for host in ("0.0.0.0", "::", "192.0.2.1", "no-such-host.invalid"))


def test_a_port_held_only_by_a_stopped_servers_connections_is_free():
    """A server that closed its connections first leaves them in TIME_WAIT on its port for a
    minute: servers (uvicorn, HAProxy) bind through that with SO_REUSEADDR, so the check must too."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            connection, _ = listener.accept()
            connection.close()  # the server side closes first: its end goes to TIME_WAIT
            client.recv(1)
    with socket.socket() as plain, pytest.raises(OSError):  # the TIME_WAIT connection is there
        plain.bind(("127.0.0.1", port))
    check_port_free("127.0.0.1", port)


def test_cli_refuses_a_busy_port_and_a_bad_directory(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            check_port_free("127.0.0.1", busy.getsockname()[1])
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a model directory" in capsys.readouterr().err

