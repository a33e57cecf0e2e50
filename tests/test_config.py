"""Configuration: composition, path resolution, and errors that come before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsearch.cli import main
from recsearch.config import load_config, model_params
from recsearch.errors import ConfigError


def test_defaults_compose_and_paths_are_absolute(tmp_path):
    cfg = load_config([f"out={tmp_path}/x", "data_root=relative/data"])
    assert cfg.model._target_ == "recsearch.models.pop.Popularity"
    assert cfg.task.metric == "ndcg@10" and cfg.task.mode == "max"
    assert Path(cfg.out).is_absolute() and Path(cfg.data_root).is_absolute()
    assert model_params(cfg) == {"shrinkage": 10.0}


def test_rating_task_selects_rmse():
    cfg = load_config(["task=rating"])
    assert (cfg.task.metric, cfg.task.mode) == ("rmse", "min")


@pytest.mark.parametrize("overrides, message", [
    (["model=nosuchmodel"], "nosuchmodel"),
    (["data=nosuchdata"], "nosuchdata"),
    (["train.max_epochs=0"], "train.max_epochs"),
    (["train.patience=-1"], "train.patience"),
    (["task.mode=best"], "task.mode"),
    (["model._target_=recsearch.models.nothere.Model"], "cannot be imported"),
    (["nosuchkey=1"], "nosuchkey"),
])
def test_bad_config_fails_with_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


def test_cli_reports_config_errors_without_traceback(capsys):
    assert main(["train", "model=nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsearch: error:") and "nosuchmodel" in err and "Traceback" not in err


def test_cli_prints_the_composed_config(capsys):
    assert main(["--cfg", "train", "task=rating"]) == 0
    assert "metric: rmse" in capsys.readouterr().out
