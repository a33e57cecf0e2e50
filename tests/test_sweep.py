"""Sweeps end to end on one local Ray (started once for this module): ASHA stopping bad trials,
the exported best model, NaN trials, a sweep where everything fails, resuming after the driver
was killed, the re-evaluation of the best configurations on fresh seeds, and the refit of the
winner on train + valid.

The model is ``Toy``, registered here under the test-only family ``sweeptoy``: its quality is
set by its hyperparameters, so each test knows which trials must win, stop early or fail. The
tests run the real command line against a copy of ``conf/`` with three extra files (the toy's
model config and search space, and a data config reading the planted dataset of
helpers/datasets.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch

from recsearch.cli import main
from recsearch.models.base import IterativeRecommender, Recommender, register
from recsearch.tuning import reevaluation, refit
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import collect_trials, experiment_trials

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@register("sweeptoy")
class Toy(IterativeRecommender):
    """Scores ``strength * affinity + noise``: affinity (X Xᵀ X, row-normalised) recovers the
    planted groups, the noise is fixed per seed, and ``strength`` grows by ``rate`` per epoch, so
    a large rate ranks well after one epoch and a tiny one stays near random; after epoch
    ``decline_after`` (0: never) it shrinks by ``rate`` instead. The training loss is NaN at
    epoch ``nan_at`` (0: never); ``delay`` seconds of sleep per epoch keep trials running long
    enough to kill a driver in between. ``luck`` makes seed 42 (the sweep's) flatter a
    configuration: its rate is ``rate * (1 + luck)`` there and ``rate * (1 - luck)`` elsewhere.
    ``fail_above`` (0: never) refuses to train on more interactions than that: a refit's failure."""

    def __init__(self, rate: float = 0.1, nan_at: int = 0, delay: float = 0.0, decline_after: int = 0,
                 luck: float = 0.0, fail_above: int = 0, **common):
        super().__init__(rate=rate, nan_at=nan_at, delay=delay, decline_after=decline_after, luck=luck,
                         fail_above=fail_above, **common)
        self.fail_above = int(fail_above)
        self.rate, self.nan_at, self.delay = float(rate), int(nan_at), float(delay)
        self.decline_after = int(decline_after)
        self.rate *= 1 + luck if self.seed == 42 else 1 - luck

    def prepare(self, train):
        super().prepare(train)
        if 0 < self.fail_above < len(train.interactions):
            raise ValueError(f"{len(train.interactions)} interactions, above fail_above={self.fail_above}")
        x = torch.as_tensor(train.matrix().toarray())
        affinity = x @ (x.T @ x)
        self.affinity = affinity / affinity.max(dim=1, keepdim=True).values.clamp(min=1e-9)
        self.noise = torch.rand(self.n_users, self.n_items, generator=torch.Generator().manual_seed(self.seed))
        self.strength = torch.zeros(())
        self.epochs = torch.zeros((), dtype=torch.long)

    def train_epoch(self) -> float:
        time.sleep(self.delay)
        self.epochs += 1
        declining = 0 < self.decline_after < int(self.epochs)
        self.strength += -self.rate if declining else self.rate
        return float("nan") if int(self.epochs) == self.nan_at else 1.0 / (1.0 + abs(float(self.strength)))

    def state(self):
        return {"strength": self.strength, "epochs": self.epochs}

    def load_state(self, state):
        self.strength, self.epochs = state["strength"].clone(), state["epochs"].clone()

    def serving_state(self):  # scoring also reads what prepare derived from the training set
        return {**self.state(), "affinity": self.affinity, "noise": self.noise}

    def restore(self, data, state):
        super().restore(data, state)
        self.affinity, self.noise = state["affinity"], state["noise"]

    def _score(self, users):
        return self.strength * self.affinity[users] + self.noise[users]


@register("sweeptoyb")
class OtherToy(Toy):
    """A second family: the toy with noise of its own, so that blending the two averages noise."""

    def prepare(self, train):
        super().prepare(train)
        self.noise = torch.rand(self.n_users, self.n_items, generator=torch.Generator().manual_seed(self.seed + 1))


EXTRA_CONF = {
    "model/sweeptoy.yaml": """# @package _global_
model:
  _target_: test_sweep.Toy
  rate: 0.1
  nan_at: 0
  delay: 0.0
  decline_after: 0
  luck: 0.0
  fail_above: 0
train:
  max_epochs: 6
  patience: 3
""",
    "search/sweeptoy.yaml": """defaults:
  - base
space:
  rate: {grid: [1.0, 0.5, 0.002, 0.001, 0.003, 0.0015]}
""",
    "model/sweeptoyb.yaml": """# @package _global_
model:
  _target_: test_sweep.OtherToy
  rate: 0.1
train:
  max_epochs: 6
  patience: 3
""",
    "search/sweeptoyb.yaml": """defaults:
  - base
space:
  rate: {grid: [0.1]}
""",
    "data/planted.yaml": """name: planted
source:
  _target_: helpers.datasets.planted_dataset
preprocess:
  dedup: true
split:
  scheme: loo
""",
}


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("conf") / "conf"
    shutil.copytree(ROOT / "conf", root)
    for name, text in EXTRA_CONF.items():
        (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def local_ray(conf):
    """One local Ray for the module; drivers started by the tests join it."""
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RECSEARCH_CONF_DIR", "PYTHONPATH")}
    os.environ["RAY_AUTH_MODE"] = "disabled"  # independent of a token file on this machine
    os.environ["RECSEARCH_CONF_DIR"] = str(conf)
    # Ray's workers inherit it from the raylet: they import Toy as test_sweep.Toy
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), saved["PYTHONPATH"]]))
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


TOY = ["model=sweeptoy", "data=planted", "ray.verbose=0", "search.reevaluate.enabled=false"]


def test_asha_sweep_ranks_trials_exports_the_best_and_reports(local_ray, tmp_path, capsys):
    """ASHA keeps a trial at a rung only if it is in the better half of the trials that reached
    that rung before it; the first to arrive always goes on. Which trials ASHA stops thus depends
    on the order in which they reach its rungs: with trials running side by side, a near-random
    trial can reach a rung first (its rival's worker descheduled) and escape, or tie there with
    the median (0.002 and 0.003 both score 0.0485 at epoch 1). One trial at a time, in grid order,
    fixes that order: 1.0 records every rung first, and each later trial meets at epoch 1 a median
    above its own value, so ASHA stops 0.5 and all four near-random trials there."""
    out = tmp_path / "asha"
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "ray.max_concurrent_trials=1",
                 "scheduler.grace_period=1", "scheduler.reduction_factor=2"])
    printed = capsys.readouterr().out
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["run"] == 6 and summary["trials"]["errored"] == 0
    assert summary["trials"]["stopped_by_asha"] >= 1, "the near-random trials must be stopped at a rung"
    best = summary["best"]
    assert best["hparams"]["rate"] >= 0.5 and best["family"] == "sweeptoy"
    assert set(best["test"]) >= {"ndcg@10", "recall@10"} and best["valid"]["ndcg@10"] > 0.3
    phases = summary["seconds"]  # where the sweep's time went, in the order it went there
    assert list(phases) == ["load_data", "ray_start", "put_data", "trials/sweeptoy", "reevaluation", "blend", "refit",
                            "ray_stop", "rank", "test_and_export"]
    assert phases["trials/sweeptoy"] == max(phases.values())
    assert summary["wall_seconds"] == pytest.approx(sum(phases.values()), abs=0.1)

    lines = (out / "leaderboard.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[1].startswith("1,sweeptoy_")
    plan = SweepPlan.load(out)
    trials = {t.name: t for t in collect_trials(plan)}
    stopped = {t.hparams["rate"] for t in trials.values() if len(t.history) < 6 and t.history[-1]["stale_epochs"] < 3}
    # grid order, one at a time: every near-random trial finds better ones recorded at rung 1
    assert stopped >= {0.002, 0.001, 0.003, 0.0015} and 1.0 not in stopped
    epochs = {t.hparams["rate"]: len(t.history) for t in trials.values()}
    assert epochs == {1.0: 6, 0.5: 1, 0.002: 1, 0.001: 1, 0.003: 1, 0.0015: 1}, "stopped at rung 1, in order"
    assert list((Path(trials[best["trial"]].path)).glob("events.out.tfevents.*")), "TensorBoard log per trial"

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and best["trial"] in html and "<script" not in html
    assert "leaderboard" in printed and best["trial"] in printed

    model = Recommender.load(out / "best")
    assert model.metadata["sweep"] == "asha" and model.metadata["test"] == best["test"]
    items, _ = model.recommend([0, 1], k=5)
    assert items.shape == (2, 5)
    # the exported weights are those of the best epoch: re-evaluating reproduces its valid metric
    from recsearch.data import load_split
    from recsearch.evaluation import Evaluator

    config = plan.first
    split = load_split(config["data"], seed=config["seed"], implicit_threshold=None)
    valid = Evaluator.for_task(config["task"]).evaluate(model, split, "valid")
    assert valid["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"], abs=1e-6)


def test_the_best_configurations_are_retrained_on_fresh_seeds_and_chosen_by_their_mean(local_ray, tmp_path):
    """The lucky configuration wins on the sweep's seed; on fresh seeds the steady one is better,
    and it is the one chosen and exported."""
    out = tmp_path / "seeds"
    code = main(["sweep", *TOY[:-1], f"out={out}", "search.num_samples=1", "scheduler=fifo",
                 "search.space.rate.grid=[0.2]", "+search.space.luck={grid:[0.0,0.95]}",
                 "search.reevaluate.top=2", "search.reevaluate.seeds=2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "leaderboard.csv").read_text().splitlines()
    assert '""luck"": 0.95' in lines[1], "on seed 42 the lucky configuration ranks first"
    seeds = summary["reevaluation"]
    assert [c["seeds"] for c in seeds["candidates"]] == [[43, 44], [43, 44]]
    assert all(c["runs"] == 2 and not c["errors"] for c in seeds["candidates"])
    lucky, steady = seeds["candidates"]
    assert lucky["hparams"]["luck"] == 0.95 and steady["hparams"]["luck"] == 0.0
    for candidate in (lucky, steady):
        valid = candidate["valid"]["ndcg@10"]
        assert valid["n"] == 2 and valid["mean"] == pytest.approx(sum(valid["values"]) / 2)
        assert valid["ci95"] > 0 and candidate["test"]["ndcg@10"]["n"] == 2
    assert steady["valid"]["ndcg@10"]["mean"] > lucky["valid"]["ndcg@10"]["mean"]
    assert seeds["chosen"] == steady["trial"] and seeds["trials_left"] == 0
    assert summary["best"]["trial"] == steady["trial"] and summary["best"]["seeds"]["valid"] == steady["valid"]

    trials = {t.name: t for t in experiment_trials(SweepPlan.load(out), "reevaluate")}
    assert sorted(t.hparams["run"]["seed"] for t in trials.values()) == [43, 43, 44, 44]
    assert all(t.status == "TERMINATED" and "test/ndcg@10" in t.history[-1] for t in trials.values())
    assert [line.split(",")[5] != "" for line in lines[1:]] == [True, True], "valid_mean of both re-evaluated rows"
    model = Recommender.load(out / "best")
    assert model.metadata["seeds"]["test"]["ndcg@10"]["mean"] == steady["test"]["ndcg@10"]["mean"]
    assert "fresh seeds" in model.metadata["selected_by"]
    assert "Re-evaluation on fresh seeds" in (out / "report.html").read_text()


def test_the_best_epoch_is_exported_from_the_newest_checkpoint(local_ray, tmp_path):
    """Tune keeps only the newest two checkpoints; each carries the best epoch's state too, so a
    trial that peaked early still exports its peak."""
    out = tmp_path / "peak"
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "scheduler=fifo", "train.patience=10",
                 "search.space.rate.grid=[0.5]", "model.decline_after=2"])
    assert code == 0
    trial = collect_trials(SweepPlan.load(out))[0]
    values = [row["valid/ndcg@10"] for row in trial.history]
    best_epoch = values.index(max(values)) + 1
    assert len(values) == 6 and best_epoch <= 2 and values[-1] < max(values)
    kept = sorted(Path(trial.path).glob("checkpoint_*"))
    assert len(kept) == 2 and all((folder / "best.pt").is_file() for folder in kept)
    model = Recommender.load(out / "best")
    assert model.metadata["epoch"] == best_epoch and float(model.strength) == pytest.approx(0.5 * best_epoch)
    assert json.loads((out / "summary.json").read_text())["best"]["valid"]["ndcg@10"] == max(values)


def test_fresh_seeds_train_the_chosen_epochs_or_early_stop(local_ray, tmp_path):
    """search.reevaluate.epochs=chosen (the default): the winner peaked at epoch 2 of 6, so its
    fresh seed trains exactly 2 epochs and is validated once, at the end; early_stopping
    instead validates every epoch and runs out its patience."""
    out = tmp_path / "chosen"
    code = main(["sweep", *TOY[:-1], f"out={out}", "search.num_samples=1", "scheduler=fifo", "train.patience=10",
                 "search.space.rate.grid=[0.5]", "model.decline_after=2", "search.reevaluate.top=1",
                 "search.reevaluate.seeds=1"])
    assert code == 0
    [fresh] = experiment_trials(SweepPlan.load(out), "reevaluate")
    assert fresh.hparams["run"]["epochs"] == 2 and [row["epoch"] for row in fresh.history] == [1, 2]
    assert [("valid/ndcg@10" in row, "test/ndcg@10" in row) for row in fresh.history] == [
        (False, False), (True, True)], "validated and tested once, after the last epoch"
    seeds = json.loads((out / "summary.json").read_text())["reevaluation"]
    assert seeds["candidates"][0]["runs"] == 1 and seeds["chosen"] == seeds["candidates"][0]["trial"]

    plan = SimpleNamespace(first={"seed": 42, "search": {"reevaluate": {
        "enabled": True, "top": 1, "seeds": 2, "epochs": "early_stopping"}}}, configs={"mf": {"iterative": True}})
    board = [{"rank": 1, "trial": "mf_00000", "family": "mf", "hparams": {}, "best_epoch": 7}]
    assert [(p["seed"], p["epochs"]) for p in reevaluation.grid(plan, board)] == [(43, None), (44, None)]
    plan.first["search"]["reevaluate"]["epochs"] = "chosen"
    assert [(p["seed"], p["epochs"]) for p in reevaluation.grid(plan, board)] == [(43, 7), (44, 7)]


def test_the_refit_trains_the_median_of_the_chosen_epochs():
    """One seed's best epoch is a noisy guess of how long to train: the refit takes the median of
    the sweep trial's best epoch and those its fresh seeds early-stopped at."""
    winner = SimpleNamespace(name="mf_00000", family="mf", hparams={"dim": 8},
                             best=lambda metric: {"epoch": 34, "valid/ndcg@10": 0.2})
    plan = SimpleNamespace(first={"task": {"metric": "ndcg@10"}}, configs={"mf": {"seed": 42}})
    assert refit.point(plan, winner)["epochs"] == 34
    assert refit.point(plan, winner, {"epochs": [70, 81, 93]})["epochs"] == 76
    assert refit.point(plan, winner, {"epochs": [34, 34, 34]}) == {
        "trial": "mf_00000", "family": "mf", "hparams": {"dim": 8}, "seed": 42, "epochs": 34}


def test_the_refit_retrains_the_winner_on_train_and_valid_for_its_best_epoch(local_ray, tmp_path, monkeypatch):
    """search.refit: the winner peaks at epoch 2 of 6; its configuration is retrained on train +
    valid for exactly 2 epochs, without validation, in a one-trial Tune experiment. That model is
    tested, once, and exported, and says so; the validation figures stay the selection run's. A
    resumed sweep does not retrain it."""
    from recsearch.data import load_split
    from recsearch.evaluation import Evaluator

    tested, evaluate = [], Evaluator.evaluate

    def counting(self, model, split, part):  # the driver's evaluations (the trials run in Ray's workers)
        tested.extend([part] if part == "test" else [])
        return evaluate(self, model, split, part)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    out = tmp_path / "refit"
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "scheduler=fifo", "train.patience=10",
                 "search.space.rate.grid=[0.5]", "model.decline_after=2", "search.refit=true"])
    assert code == 0 and tested == ["test"]
    plan = SweepPlan.load(out)
    values = [row["valid/ndcg@10"] for row in collect_trials(plan)[0].history]
    assert len(values) == 6 and values.index(max(values)) + 1 == 2
    [refit] = experiment_trials(plan, "refit")
    assert refit.status == "TERMINATED" and refit.hparams["run"]["epochs"] == 2
    assert [row["epoch"] for row in refit.history] == [1, 2]
    assert not [k for row in refit.history for k in row if k.startswith(("valid/", "test/"))], "no valid, no test"

    split = load_split(plan.first["data"], seed=plan.first["seed"], implicit_threshold=None)
    known = len(split.train.interactions) + len(split.valid)
    summary = json.loads((out / "summary.json").read_text())
    best = summary["best"]
    assert best["refit"] == {"on": "train + valid", "epochs": 2, "interactions": known,
                            "trial": f"{best['trial']}_refit"}
    assert best["epoch"] == 2 and best["valid"]["ndcg@10"] == max(values), "validation: the selection run's"
    model = Recommender.load(out / "best")
    assert model.metadata["refit"] == best["refit"] and model.metadata["test"] == best["test"]
    assert float(model.strength) == pytest.approx(0.5 * 2), "trained for the 2 chosen epochs"
    seen = model.serving_data.seen
    assert seen.nnz == known and all(seen[u, i] for u, i in zip(split.valid.user, split.valid.item, strict=True))
    assert "Refitted before its test" in (out / "report.html").read_text()

    lines = _result_lines(refit.path)
    assert main(["resume", str(out)]) == 0
    assert _result_lines(experiment_trials(plan, "refit")[0].path) == lines, "a finished refit is not re-run"
    assert json.loads((out / "summary.json").read_text())["best"]["test"] == best["test"]


def test_a_failed_refit_loses_nothing(local_ray, tmp_path, capsys):
    """The refit fails (the toy refuses train + valid's extra interactions): the sweep still writes
    its summary, leaderboard and report, exports the winner as trained on train, says so, and
    exits nonzero naming the refit's error."""
    from recsearch.config import load_config, to_container
    from recsearch.data import load_split

    out = tmp_path / "refitfail"
    cfg = load_config(TOY[:2])  # the planted data, split as the sweep splits it
    train_size = len(load_split(to_container(cfg.data), cfg.seed).train.interactions)
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "scheduler=fifo", "search.space.rate.grid=[0.5]",
                 f"model.fail_above={train_size}", "search.refit=true"])
    assert code == 2
    err = capsys.readouterr().err
    assert "the refit of" in err and "above fail_above" in err and "trained on train alone" in err
    summary = json.loads((out / "summary.json").read_text())
    assert "above fail_above" in summary["refit_error"]["error"] and "refit" not in summary["best"]
    assert "refit" not in Recommender.load(out / "best").metadata
    assert "The refit on train + valid failed" in (out / "report.html").read_text()


def test_a_blend_of_the_families_winners_is_chosen_refitted_tested_once_and_served(local_ray, tmp_path, monkeypatch):
    """search.blend with two toy families whose noise differs: averaging their scores raises
    validation over either, so the blend replaces the winner. With search.refit both members are
    refitted on train + valid; the blend is tested once, exported as best/ and loads as a model
    whose scores are its members' weighted standardised scores. A resumed sweep keeps it."""
    from recsearch.evaluation import Evaluator
    from recsearch.models.blend import standardised

    tested, evaluate = [], Evaluator.evaluate

    def counting(self, model, split, part):
        tested.extend([(model.family, part)] if part == "test" else [])
        return evaluate(self, model, split, part)

    monkeypatch.setattr(Evaluator, "evaluate", counting)
    out = tmp_path / "blend"
    code = main(["sweep", "search.models=[sweeptoy,sweeptoyb]", *TOY[1:], f"out={out}", "search.num_samples=1",
                 "scheduler=fifo", "search.family_overrides={sweeptoy:['search.space.rate.grid=[0.1]']}",
                 "search.blend.enabled=true", "search.refit=true"])
    assert code == 0 and tested == [("blend", "test")], "only the chosen blend meets the test split"
    record = json.loads((out / "blend.json").read_text())
    assert record["chosen"] and {m["family"] for m in record["members"]} == {"sweeptoy", "sweeptoyb"}
    assert record["valid"]["ndcg@10"] > max(m["valid"] for m in record["members"])
    plan = SweepPlan.load(out)
    refits = refit.trained(plan)
    assert sorted(refits) == sorted(m["trial"] for m in record["members"])
    assert all(t.status == "TERMINATED" for t in refits.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"]["family"] == "blend" and summary["blend"] == record
    model = Recommender.load(out / "best")
    assert model.family == "blend" and model.metadata["test"] == summary["best"]["test"]
    assert [m.family for m in model.members] == [m["family"] for m in record["members"]]
    assert [w for w in model.weights] == [m["weight"] for m in record["members"]]
    assert model.serving_data.seen.nnz == summary["best"]["refit"]["interactions"], "members know train + valid"
    users = torch.arange(5)
    expected = sum(w * standardised(m.score(users)) for w, m in zip(model.weights, model.members, strict=True))
    torch.testing.assert_close(model.score(users), expected)
    report = (out / "report.html").read_text()
    assert "Blend of the families' winners" in report and "each member retrained on train + valid" in report

    assert main(["resume", str(out)]) == 0
    assert json.loads((out / "blend.json").read_text()) == record
    assert json.loads((out / "summary.json").read_text())["best"]["test"] == summary["best"]["test"]


def test_a_blend_needs_two_families_of_a_ranking_sweep(capsys):
    assert main(["sweep", *TOY, "search.blend.enabled=true"]) == 2
    assert "search.blend blends the winners of several families" in capsys.readouterr().err


def test_a_diverged_trial_errors_and_the_sweep_goes_on(local_ray, tmp_path):
    out = tmp_path / "nan"
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "scheduler=fifo",
                 "search.space.rate.grid=[0.5]", "+search.space.nan_at={grid:[0,2]}"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["run"] == 2 and summary["trials"]["errored"] == 1
    assert summary["best"]["hparams"]["nan_at"] == 0
    assert "FloatingPointError: training loss is nan at epoch 2" in summary["errors"][0]["error"]
    row = (out / "leaderboard.csv").read_text().splitlines()[2]
    assert ",ERROR," in row and ",error," in row


def test_a_sweep_where_every_trial_fails_exits_nonzero_with_the_reasons(local_ray, tmp_path, capsys):
    out = tmp_path / "allfail"
    code = main(["sweep", *TOY, f"out={out}", "search.num_samples=1", "scheduler=fifo",
                 "search.space.rate.grid=[0.5]", "+search.space.nan_at={grid:[1,2]}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "all 2 trials failed" in err and "FloatingPointError" in err and str(out / "summary.json") in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best"] is None and summary["trials"]["errored"] == 2
    assert (out / "report.html").is_file() and not (out / "best").exists()


def test_resume_after_a_killed_driver_does_not_rerun_finished_trials(local_ray, tmp_path):
    """With Optuna TPE, whose state (4 samples in all) must come back too."""
    out = tmp_path / "killed"
    env = {**os.environ, "RAY_ADDRESS": local_ray}
    driver = subprocess.Popen(
        [sys.executable, "-m", "recsearch", "sweep", *TOY, f"out={out}", "scheduler=fifo", "search.num_samples=4",
         "search.algorithm=optuna", "~search.space.rate", "+search.space.rate={loguniform:[0.2,1.0]}",
         "model.delay=0.4", "ray.max_concurrent_trials=1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = _wait_for_a_finished_trial(out, driver)
    finally:
        driver.kill()
        driver.wait()
    finished = {name: lines for name, (status, lines) in before.items() if status == "TERMINATED"}
    assert finished and len(finished) < 4, f"the kill should land mid-sweep: {before}"

    assert main(["resume", str(out)]) == 0
    after = {t.name: t for t in collect_trials(SweepPlan.load(out))}
    assert len(after) == 4 and all(t.status == "TERMINATED" for t in after.values())
    for name, lines in finished.items():
        assert _result_lines(after[name].path) == lines, f"{name} finished before the kill and must not re-run"
    for trial in after.values():
        assert [row["epoch"] for row in trial.history] == list(range(1, 7))
    assert json.loads((out / "summary.json").read_text())["trials"]["completed"] == 4


def _wait_for_a_finished_trial(out: Path, driver: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert driver.poll() is None, "the sweep ended before it could be killed"
        if (out / "sweep.json").is_file():
            trials = collect_trials(SweepPlan.load(out))
            if any(t.status == "TERMINATED" for t in trials):
                return {t.name: (t.status, _result_lines(t.path)) for t in trials}
        time.sleep(0.2)
    raise AssertionError("no trial finished in time")


def _result_lines(trial_dir: str) -> int:
    path = Path(trial_dir) / "result.json"
    return len(path.read_text().splitlines()) if path.is_file() else 0
