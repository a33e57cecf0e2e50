"""Reading a sweep back from Tune's files, the leaderboard's ranking and stop reasons, and the
HTML report, on a sweep folder written here in Tune's layout (no Ray needed)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch

from recsearch.cli import main
from recsearch.training import EarlyStopping, EpochEnd, serialized
from recsearch.tuning import checkpoint
from recsearch.tuning.leaderboard import leaderboard, stopped_by
from recsearch.tuning.plan import SweepPlan, plan_sweep
from recsearch.tuning.results import Trial, _error_line, collect_trials

MAX_EPOCHS, PATIENCE = 6, 2
TRACEBACK = """Failure # 1 (occurred at 2026-01-01_00-00-00)
ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1, actor_id=ab, repr=run_trial)
  File "/x/recsearch/training.py", line 33, in train_step
    raise FloatingPointError(f"training loss is {loss} at epoch {epoch}: the model diverged")
FloatingPointError: training loss is nan at epoch 3: the model diverged
"""


def curve(values):
    """result.json rows: one per epoch; stale_epochs counts epochs without a new best."""
    rows, best, stale = [], None, 0
    for epoch, value in enumerate(values, 1):
        stale = 0 if best is None or value > best else stale + 1
        best = value if best is None or value > best else best
        rows.append({"epoch": epoch, "loss": 1.0 / epoch, "valid/ndcg@10": value, "valid/recall@10": value / 2,
                     "stale_epochs": stale, "time_total_s": float(epoch), "config": {}, "pid": 1})
    return rows


TRIALS = {  # trial id -> (status, rate, epochs' validation NDCG, error)
    "00000": ("TERMINATED", 0.1, [0.2, 0.3, 0.35, 0.4, 0.42, 0.45], None),  # ran all epochs
    "00001": ("TERMINATED", 0.001, [0.05, 0.06], None),  # ASHA stopped it at epoch 2
    "00002": ("TERMINATED", 0.05, [0.3, 0.5, 0.48, 0.49], None),  # its patience (2) stopped it
    "00003": ("ERROR", 0.9, [0.6, 0.7], TRACEBACK),  # diverged: good values but not ranked
    "00004": ("RUNNING", 0.01, [0.1], None),  # still running
}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> SweepPlan:
    out = tmp_path_factory.mktemp("report") / "toy-sweep"
    plan = plan_sweep(["model=mf", f"out={out}", f"train.max_epochs={MAX_EPOCHS}", f"train.patience={PATIENCE}",
                       "~search.space", "+search.space={lr:{loguniform:[1e-4,1.0]},optimizer:{choice:[adam,sgd]}}"])
    plan.save()
    experiment = Path(plan.experiment_path("mf"))
    trial_data = []
    for trial_id, (status, lr, values, error) in TRIALS.items():
        folder = experiment / f"mf_{trial_id}"
        folder.mkdir(parents=True)
        rows = curve(values)
        if trial_id == "00002":  # a resumed trial repeats its last epoch: the later report wins
            rows.insert(2, {**rows[2], "valid/ndcg@10": 0.01})
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if error:
            (folder / "error.txt").write_text(error)
        hparams = {"lr": lr, "optimizer": "adam" if lr < 0.05 else "sgd"}
        meta = {"trial_id": trial_id, "status": status, "config": hparams, "relative_logdir": folder.name}
        trial_data.append([json.dumps(meta), json.dumps({"error_filename": "error.txt" if error else None})])
    (experiment / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": trial_data}))
    return plan


def test_trials_are_read_back_with_their_histories_and_errors(sweep):
    trials = {t.trial_id: t for t in collect_trials(sweep)}
    assert set(trials) == set(TRIALS)
    assert trials["00003"].error == "FloatingPointError: training loss is nan at epoch 3: the model diverged"
    assert [r["epoch"] for r in trials["00002"].history] == [1, 2, 3, 4]
    assert trials["00002"].history[2]["valid/ndcg@10"] == 0.48, "the last report of a repeated epoch wins"
    assert trials["00000"].best("ndcg@10")["epoch"] == 6


def test_a_trials_best_epoch_follows_the_metrics_direction():
    history = [{"epoch": e, "valid/rmse": v, "valid/mae": v} for e, v in enumerate([1.0, 0.9, 0.95], 1)]
    trial = Trial("mf", "0", "TERMINATED", {}, history, None, "/nowhere")
    assert trial.best("rmse")["epoch"] == 2 and trial.best("mae")["epoch"] == 2


def test_leaderboard_ranks_finished_trials_and_says_why_each_stopped(sweep):
    board = leaderboard(sweep, collect_trials(sweep))
    assert [(r["trial"], r["rank"], r["stopped"]) for r in board] == [
        ("mf_00002", 1, "patience"), ("mf_00000", 2, "no"), ("mf_00001", 3, "asha"),
        ("mf_00003", None, "error"), ("mf_00004", None, "unfinished"),
    ]
    assert board[0]["ndcg@10"] == 0.5 and board[0]["best_epoch"] == 2 and board[0]["epochs"] == 4


def test_a_closed_form_trial_is_never_counted_as_stopped(sweep):
    trial = next(t for t in collect_trials(sweep) if t.trial_id == "00001")
    assert stopped_by(trial, {**sweep.configs["mf"], "iterative": False}) == "no"
    assert stopped_by(trial, {**sweep.configs["mf"], "scheduler": {"name": "fifo"}}) == "no"


def test_report_command_writes_leaderboard_and_self_contained_html(sweep, capsys):
    assert main(["report", sweep.out]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"1\s+mf_00002\s+mf\s+0\.5000\s+2\s+4\s+patience\s+lr=0\.05 optimizer=sgd", printed)
    with open(Path(sweep.out) / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["trial"] for r in rows] == ["mf_00002", "mf_00000", "mf_00001", "mf_00003", "mf_00004"]
    assert json.loads(rows[0]["hparams"]) == {"lr": 0.05, "optimizer": "sgd"}
    assert rows[3]["error"].startswith("FloatingPointError") and rows[3]["rank"] == ""
    html = (Path(sweep.out) / "report.html").read_text()
    assert "has not finished" in html  # no summary.json yet: nothing selected or tested
    assert html.count("data:image/png;base64,") == 3  # per-family best, learning curves, hyperparameters
    assert "src='http" not in html and "<script" not in html and "<link" not in html


def test_the_newest_checkpoint_holds_the_best_epochs_state(sweep):
    trial = next(t for t in collect_trials(sweep) if t.trial_id == "00002")
    with checkpoint.latest(trial.path) as folder:
        assert folder is None  # this fixture's trials kept none
    stopper = EarlyStopping("max", patience=5, smoothing=0.5, best=0.5, best_epoch=3, trend=0.42, best_trend=0.45,
                            stale=7)
    best = serialized({"epoch": torch.tensor(3)})
    for name, epoch in (("checkpoint_000009", 10), ("checkpoint_000010", 11)):
        folder = Path(trial.path) / name
        folder.mkdir()
        end = EpochEnd({"epoch": epoch}, serialized({"epoch": torch.tensor(epoch)}), best, stopper)
        checkpoint.write(folder, end)
    with checkpoint.latest(trial.path) as folder:
        assert folder.name == "checkpoint_000010"
        saved = checkpoint.read(folder)
    assert (saved.epoch, saved.best, saved.best_epoch, saved.stale) == (11, 0.5, 3, 7)
    assert (saved.trend, saved.best_trend) == (0.42, 0.45)
    assert torch.load(io.BytesIO(saved.best_state), weights_only=True)["epoch"] == 3
    assert torch.load(io.BytesIO(saved.state), weights_only=True)["epoch"] == 11
    (folder / checkpoint.BEST_STATE_FILE).unlink()  # written only when an earlier epoch was the best
    assert checkpoint.read(folder).best_state == checkpoint.read(folder).state


def test_error_line_is_the_exception_not_the_traceback():
    assert _error_line(TRACEBACK).startswith("FloatingPointError: training loss is nan")
    assert _error_line("something odd\n") == "something odd"
    assert _error_line(None) is None


def test_report_of_a_folder_that_is_no_sweep_fails_cleanly(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a sweep folder" in capsys.readouterr().err
