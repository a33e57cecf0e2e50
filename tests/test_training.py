"""The training loop: early stopping, best-epoch restore, divergence, `recsearch train`, and the
refit on train + valid (a set number of epochs, no validation)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from recsearch.models.base import IterativeRecommender
from recsearch.training import EarlyStopping, Resume, Stopping, train, train_step


class Counter(IterativeRecommender):
    """An iterative model whose 'weights' are the number of epochs trained, with scripted losses."""

    family = "counter"  # not registered: the loop needs no registry

    def __init__(self, losses=(1.0,) * 50, **common):
        super().__init__(**common)
        self.losses = list(losses)

    def prepare(self, train):
        super().prepare(train)
        self.w = torch.zeros(())

    def train_epoch(self) -> float:
        self.w += 1
        return self.losses[int(self.w) - 1]

    def state(self):
        return {"w": self.w}

    def load_state(self, state):
        self.w = state["w"].clone()

    def _score(self, users):
        return torch.full((len(users), self.n_items), float(self.w))


class ScriptedEvaluator:
    """Validation NDCG as a function of the epochs trained: the loop must keep the best."""

    def __init__(self, curve):
        self.curve = curve

    def evaluate(self, model, split, part):
        return {"ndcg@10": self.curve[int(model.w) - 1], "recall@10": 0.5}


def test_early_stopping_counts_stale_epochs():
    stopper = EarlyStopping("min", patience=2)
    assert stopper.update(1.0, 1) and stopper.update(0.9, 2)
    assert not stopper.update(0.95, 3) and not stopper.should_stop
    assert not stopper.update(0.9, 4) and stopper.should_stop  # equal is not better
    assert (stopper.best, stopper.best_epoch) == (0.9, 2)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping("lowest", 2)


def stop_epoch(curve, stopper: EarlyStopping) -> int:
    """The epoch after which ``stopper`` ends training on ``curve`` (its length if never)."""
    for epoch, value in enumerate(curve, 1):
        stopper.update(value, epoch)
        if stopper.should_stop:
            return epoch
    return len(curve)


def test_a_smoothed_trend_rides_out_noise_on_a_slow_climb():
    """A climb of 0.01 per epoch with a lucky +0.05 every sixth epoch: the raw value then misses
    that best for 4 epochs in a row; the moving average keeps improving."""
    curve = [0.1 + 0.01 * e + (0.05 if e % 6 == 2 else 0) for e in range(30)]
    assert stop_epoch(curve, EarlyStopping("max", patience=3)) == 6  # 3 stale epochs after the lucky epoch 3
    smoothed = EarlyStopping("max", patience=3, smoothing=0.7)
    assert stop_epoch(curve, smoothed) == 30
    assert (smoothed.best, smoothed.best_epoch) == (max(curve), 27), "the best epoch is the best raw value"
    with pytest.raises(ValueError, match="smoothing"):
        EarlyStopping("max", 3, smoothing=1.0)


def test_patience_grows_with_the_best_epoch_and_nothing_stops_before_min_epochs():
    late_peak = [0.1 * e for e in range(1, 21)] + [1.0] * 12  # best at epoch 20, then a plateau
    assert stop_epoch(late_peak, EarlyStopping("max", patience=3)) == 23
    assert stop_epoch(late_peak, EarlyStopping("max", patience=3, patience_ratio=0.5)) == 30  # 20 * 0.5 = 10 epochs
    slow_start = [0.2, 0.2, 0.2, 0.2, 0.3, 0.4, 0.5]  # a plateau before it learns
    assert stop_epoch(slow_start, EarlyStopping("max", patience=2)) == 3
    assert stop_epoch(slow_start, EarlyStopping("max", patience=2, min_epochs=5)) == 7


def test_stopping_settings_come_from_the_train_config():
    settings = Stopping.of({"max_epochs": 30, "patience": 4, "min_epochs": 3, "patience_ratio": 0.5, "smoothing": 0.7})
    assert settings == Stopping(patience=4, min_epochs=3, patience_ratio=0.5, smoothing=0.7)
    assert Stopping.of({"patience": 4}) == Stopping(4), "a plan saved before the new keys keeps the old rule"
    stopper = settings.stopper("min")
    assert (stopper.mode, stopper.patience, stopper.min_epochs, stopper.smoothing) == ("min", 4, 3, 0.7)


def test_train_stops_early_and_restores_the_best_epoch(planted_split):
    curve = [0.1, 0.3, 0.5, 0.4, 0.45, 0.2, 0.9]
    model = Counter()
    seen = []
    result = train(model, planted_split, ScriptedEvaluator(curve), "ndcg@10", max_epochs=10, stopping=3,
                   on_epoch=seen.append)
    assert [end.row["epoch"] for end in seen] == [1, 2, 3, 4, 5, 6]  # 3 epochs without beating 0.5
    assert [end.row["stale_epochs"] for end in seen] == [0, 0, 0, 1, 2, 3]
    assert result.best_epoch == 3 and result.stopped_early
    assert result.best_valid == {"ndcg@10": 0.5, "recall@10": 0.5}
    assert float(model.w) == 3, "the best epoch's state must be restored"
    last = seen[-1]  # what a checkpoint of epoch 6 holds: its own state and the best epoch's
    assert torch.load(io.BytesIO(last.state), weights_only=True)["w"] == 6
    assert torch.load(io.BytesIO(last.best_state), weights_only=True)["w"] == 3


def test_the_selection_metrics_direction_comes_from_the_registry(planted_split):
    errors = [0.9, 0.8, 0.85, 0.95, 0.99]

    class RatingEvaluator(ScriptedEvaluator):
        def evaluate(self, model, split, part):
            return {"rmse": self.curve[int(model.w) - 1]}

    model = Counter()
    result = train(model, planted_split, RatingEvaluator(errors), "rmse", max_epochs=10, stopping=3)
    assert result.best_epoch == 2 and result.best_valid == {"rmse": 0.8} and float(model.w) == 2


def test_a_resumed_run_continues_where_the_checkpoint_left_it(planted_split):
    """Stopped after epoch 4 and resumed, the loop trains the same epochs, stops at the same one
    and restores the same best state as a run that was never interrupted."""
    curve = [0.1, 0.3, 0.5, 0.4, 0.45, 0.2, 0.9]
    whole = []
    train(Counter(), planted_split, ScriptedEvaluator(curve), "ndcg@10", 10, 3, on_epoch=whole.append)
    end = whole[3]  # after epoch 4: best 0.5 at epoch 3, one stale epoch
    stopper = end.stopper
    resume = Resume(epoch=4, state=end.state, best_state=end.best_state, best=stopper.best,
                    best_epoch=stopper.best_epoch, stale=stopper.stale, trend=stopper.trend, best_trend=stopper.best_trend)
    model, rest = Counter(), []
    result = train(model, planted_split, ScriptedEvaluator(curve), "ndcg@10", 10, 3, on_epoch=rest.append,
                   resume=resume)
    timeless = [{k: v for k, v in e.row.items() if not k.endswith("_seconds")} for e in rest + whole[4:]]
    assert [e.row["epoch"] for e in rest] == [5, 6] and timeless[:2] == timeless[2:]
    assert result.best_epoch == 3 and result.stopped_early and float(model.w) == 3
    done = Resume(epoch=6, state=rest[-1].state, best_state=rest[-1].best_state, best=0.5, best_epoch=3, stale=3,
                  trend=0.2, best_trend=0.5)
    model = Counter()
    assert train(model, planted_split, ScriptedEvaluator(curve), "ndcg@10", 10, 3, resume=done).history == []
    assert float(model.w) == 3, "a run resumed after it stopped trains nothing and keeps the best state"


def test_diverged_loss_raises(planted_split):
    model = Counter(losses=[1.0, float("nan")])
    model.prepare(planted_split.train)
    train_step(model, planted_split, ScriptedEvaluator([0.1, 0.2]), 1)
    with pytest.raises(FloatingPointError, match="diverged"):
        train_step(model, planted_split, ScriptedEvaluator([0.1, 0.2]), 2)


def test_train_command_writes_metrics_and_model(tmp_path, ml100k_dir):
    from recsearch.cli import main
    from recsearch.models import Recommender

    out = tmp_path / "pop"
    assert main(["train", "model=pop", "data=ml-100k", f"data_root={ml100k_dir.parent}", f"out={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("model", "data", "task", "split", "valid", "test", "epochs", "fit_seconds"):
        assert key in metrics
    assert (metrics["model"], metrics["data"], metrics["task"], metrics["split"]) == ("pop", "ml-100k", "ranking", "random")
    assert 0.05 < metrics["test"]["ndcg@10"] < 0.2  # RecBole measured 0.101 for Pop on this split kind
    assert {"ndcg@10", "recall@10", "mrr@10", "coverage@10"} <= set(metrics["valid"])
    model = Recommender.load(out / "model")
    assert model.metadata["test"] == metrics["test"]


class NoValidation:
    """An evaluator a refit must never call: it has no validation part left to evaluate."""

    def evaluate(self, model, split, part):
        raise AssertionError(f"evaluated on {part} during a refit")


def test_the_refit_split_trains_on_valid_too_and_tests_as_before(make_split):
    """An item seen only in validation becomes a training item of the refit; the test part is
    evaluated as on the original split, whose test mask held the validation items already."""
    from recsearch.evaluation import Evaluator
    from recsearch.models.pop import Popularity

    split = make_split(3, 5, train=[(0, 0), (1, 0), (1, 1), (2, 1)], valid=[(0, 4), (2, 0)],
                       test=[(0, 1), (1, 2), (2, 3)])
    refit = split.train_and_valid()
    assert refit.sizes() == {"train": 6, "valid": 0, "test": 3}
    assert refit.train.matrix()[0, 4] == 1 and split.train.matrix()[0, 4] == 0, "item 4 is known only to the refit"
    assert (refit.n_users, refit.n_items) == (split.n_users, split.n_items)
    evaluator = Evaluator("ranking", ["ndcg", "recall"], [2])
    model = Popularity(device="cpu").fit(split.train)
    assert evaluator.evaluate(model, refit, "test") == evaluator.evaluate(model, split, "test")
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluator.evaluate(model, refit, "valid")


def test_without_a_stopping_rule_train_runs_exactly_max_epochs_and_never_validates(planted_split):
    model, seen = Counter(), []
    result = train(model, planted_split.train_and_valid(), NoValidation(), "ndcg@10", 4, None, on_epoch=seen.append)
    assert [end.row["epoch"] for end in seen] == [1, 2, 3, 4] and not any("valid/ndcg@10" in e.row for e in seen)
    assert float(model.w) == 4 and result.best_epoch == 4, "the last epoch is the one kept"
    assert result.best_valid == {} and not result.stopped_early
    assert seen[-1].state == seen[-1].best_state and seen[-1].stopper.best_epoch == 4


def test_train_command_refits_for_the_best_epoch_and_tests_once(tmp_path, monkeypatch):
    """``train.refit``: after the early-stopped run, a fresh model trains on train + valid for its
    best epoch's count, without validation; only that model is tested, once, and saved."""
    from recsearch import training
    from recsearch.cli import main
    from recsearch.evaluation import Evaluator
    from recsearch.models import Recommender

    steps, tested = [], []
    step, evaluate = training.train_step, Evaluator.evaluate

    def recording_step(model, split, evaluator, epoch):
        steps.append((len(split.train.interactions), evaluator is None))
        return step(model, split, evaluator, epoch)

    def recording_evaluate(self, model, split, part):
        if part == "test":
            tested.append(len(split.train.interactions))
        return evaluate(self, model, split, part)

    monkeypatch.setattr(training, "train_step", recording_step)
    monkeypatch.setattr(Evaluator, "evaluate", recording_evaluate)
    out = tmp_path / "mf"
    assert main(["train", "model=mf", "data.source.n_users=150", "data.source.n_items=80",
                 "data.source.n_interactions=3000", "train.max_epochs=4", "train.refit=true", f"out={out}"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    sizes, refit = metrics["sizes"], metrics["refit"]
    assert refit == {"on": "train + valid", "epochs": metrics["best_epoch"],
                     "interactions": sizes["train"] + sizes["valid"]}
    selection = [n for n, unvalidated in steps if not unvalidated]
    assert len(selection) == metrics["epochs"] and set(selection) == {sizes["train"]}
    assert steps[len(selection):] == [(refit["interactions"], True)] * metrics["best_epoch"]
    assert tested == [refit["interactions"]], "the test split is evaluated once, for the refitted model"
    best_row = metrics["history"][metrics["best_epoch"] - 1]
    assert metrics["valid"] == {k.removeprefix("valid/"): v for k, v in best_row.items() if k.startswith("valid/")}
    model = Recommender.load(out / "model")
    assert model.metadata["refit"] == refit and model.metadata["test"] == metrics["test"]
    assert model.serving_data.seen.nnz == refit["interactions"], "the bundle's seen items include validation's"
