"""The blend: its scores, its checks, the greedy weight search, and ranking fixed scores.
(The contract test runs it like every family; tests/test_sweep.py runs a sweep's blend.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from recsearch.errors import ConfigError
from recsearch.evaluation import Evaluator
from recsearch.models.base import model_class
from recsearch.models.blend import standardised
from recsearch.models.factory import create
from recsearch.tuning.blending import blendable, greedy

MEMBERS = [{"family": "itemknn", "hparams": {"k": 20}},
           {"family": "mf", "weight": 0.5, "epochs": 3, "hparams": {"dim": 8, "batch_size": 256}}]


def blend(members=MEMBERS):
    return create(model_class("blend"), {"members": members}, seed=0, device="cpu")


def test_standardised_rows_have_mean_zero_and_unit_spread():
    rows = standardised(torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]]))
    assert rows[0].tolist() == pytest.approx([-0.9258, -0.4629, 0.0, 1.3887], abs=1e-4)  # (x - 3) / sqrt(14 / 3)
    assert rows[1].tolist() == [0.0, 0.0, 0.0, 0.0], "a constant row adds nothing"


def test_a_blend_scores_the_weighted_sum_of_its_members_standardised_scores(planted_split):
    model = blend()
    model.fit(planted_split.train)
    knn, mf = model.members
    assert mf.hparams["dim"] == 8 and knn.hparams["k"] == 20
    users = torch.arange(10)
    expected = standardised(knn.score(users)) + 0.5 * standardised(mf.score(users))
    torch.testing.assert_close(model.score(users), expected)


@pytest.mark.parametrize(("members", "message"), [
    ([], "members: give at least one member"),
    ([{"weight": 1.0}], "members[0]: a member is a mapping"),
    ([{"family": "ease", "colour": "red"}], "members[0]: a member is a mapping"),
    ([{"family": "ease"}, {"family": "lstm"}], "members[1]: a blend cannot hold model family 'lstm'"),
    ([{"family": "ease", "weight": 0}], "members[0].weight must be a positive number"),
    ([{"family": "mf", "epochs": 0}], "members[0].epochs must be a positive integer"),
    ([{"family": "ease", "hparams": {"l3": 1.0}}], "members[0]: model.l3"),
    ([{"family": "nope"}], "unknown model family 'nope'"),
])
def test_a_bad_member_is_named(members, message):
    with pytest.raises(ConfigError, match="model=blend: ") as err:
        blend(members)
    assert message in str(err.value)


def test_greedy_starts_from_the_best_member_and_adds_while_validation_rises():
    """A validation that peaks at weights (1, 0.5, 0): member 0 starts (best alone), member 1
    joins at 0.3 then 0.2 (closest to the peak each step), member 2 never helps."""
    def valid(w):
        return -((w[0] - 1) ** 2 + (w[1] - 0.5) ** 2 + w[2] ** 2) / max(w[0], 1e-9) ** 2

    weights, singles, steps = greedy(valid, 3, [0.1, 0.2, 0.3], max_steps=10)
    assert singles[0] == max(singles) and weights[2] == 0.0
    assert [(s["member"], s["weight"]) for s in steps] == [(1, 0.3), (1, 0.2)]
    assert weights == pytest.approx([1.0, 0.5, 0.0])
    assert greedy(valid, 3, [0.1, 0.2, 0.3], max_steps=1)[0] == pytest.approx([1.0, 0.3, 0.0])


def test_greedy_keeps_the_single_best_when_nothing_helps():
    """Member 1's share of the weight: adding member 0 lowers it, more of member 1 only ties."""
    weights, singles, steps = greedy(lambda w: w[1] / sum(w), 2, [0.5, 1.0], max_steps=5)
    assert singles == [0.0, 1.0] and weights == [0.0, 1.0] and steps == []


def test_each_family_joins_with_the_winner_its_re_evaluation_chose():
    """mf's best single-seed trial lost on fresh seeds to its runner-up: the blend takes the
    runner-up, as the sweep's own choice would; ease, not re-evaluated, joins with its best
    ranked; a sequential family (lstm) cannot be blended."""
    models = {"mf": "recsearch.models.mf.MatrixFactorization", "ease": "recsearch.models.ease.EASE",
              "lstm": "recsearch.models.lstm.SequentialRecommender"}
    plan = SimpleNamespace(first={"task": {"metric": "ndcg@10"}},
                           configs={f: {"model": {"_target_": t}} for f, t in models.items()})
    board = [{"trial": trial, "family": trial.split("_")[0], "rank": rank}
             for rank, trial in enumerate(["lstm_0", "mf_0", "mf_1", "ease_0", "ease_1"], 1)]
    board.append({"trial": "mf_2", "family": "mf", "rank": None})  # unfinished
    reevaluated = {"candidates": [
        {"trial": "lstm_0", "family": "lstm", "runs": 2, "valid": {"ndcg@10": {"mean": 0.40}}},
        {"trial": "mf_0", "family": "mf", "runs": 2, "valid": {"ndcg@10": {"mean": 0.30}}},
        {"trial": "mf_1", "family": "mf", "runs": 2, "valid": {"ndcg@10": {"mean": 0.31}}},
        {"trial": "ease_0", "family": "ease", "runs": 0, "valid": {}},  # none of its runs finished
    ]}
    assert [r["trial"] for r in blendable(plan, board, reevaluated)] == ["mf_1", "ease_0"]
    assert [r["trial"] for r in blendable(plan, board)] == ["mf_0", "ease_0"]


def test_ranking_fixed_scores_equals_evaluating_the_model(planted_split):
    model = create(model_class("itemknn"), {"k": 20}, device="cpu").fit(planted_split.train)
    evaluator = Evaluator("ranking", ["ndcg", "recall"], [5, 10], batch_size=16)
    scores = model.score(torch.arange(planted_split.n_users))
    for part in ("valid", "test"):
        assert evaluator.evaluate_scores(scores, planted_split, part) == evaluator.evaluate(model, planted_split, part)
    with pytest.raises(ValueError, match="scores of shape"):
        evaluator.evaluate_scores(scores[:5], planted_split, "valid")


def test_a_blend_scores_histories_natively_or_by_fold_in_as_its_members_do(planted_split):
    native = create(model_class("blend"), {}, seed=0, device="cpu").fit(planted_split.train)  # EASE + ItemKNN
    assert native.scores_history and not native.folds_in
    users = [3, 7, 11]
    own = native.score_history([native.user_history(u) for u in users])
    torch.testing.assert_close(own, native.score(torch.tensor(users)), rtol=1e-5, atol=1e-5)
    folding = blend()  # ItemKNN + MF, which folds a history in
    assert folding.folds_in and not folding.scores_history


def test_export_prunes_the_members_with_an_item_item_matrix(planted_split, tmp_path):
    from recsearch.models.base import Recommender, UnsupportedOperation
    from recsearch.serving.export import export_model

    model = blend()  # ItemKNN (pruned) + MF (kept)
    model.fit(planted_split.train)
    pruned = Recommender.load(export_model(model.save(tmp_path / "full"), tmp_path / "top3", top_k=3), device="cpu")
    assert int((pruned.members[0].neighbour_sim != 0).sum()) <= 3 * planted_split.n_items
    torch.testing.assert_close(pruned.members[1].score(torch.arange(4)), model.members[1].score(torch.arange(4)))
    with pytest.raises(UnsupportedOperation, match="no member of this blend"):
        blend([{"family": "mf", "epochs": 1}]).fit(planted_split.train).pruned_state(3)
