"""Configuration: composition, path resolution, and strict input: every bad key, type, value,
output folder or data file is one line naming it, before any data is read or Ray starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsearch.cli import main
from recsearch.config import load_config
from recsearch.errors import ConfigError
from recsearch.evaluation import metric_mode
from recsearch.models.factory import hparams_of


def test_defaults_compose_and_paths_are_absolute(tmp_path):
    cfg = load_config([f"out={tmp_path}/x", "data_root=relative/data"])
    assert cfg.model._target_ == "recsearch.models.pop.Popularity"
    assert cfg.task.metric == "ndcg@10" and metric_mode(cfg.task.metric) == "max"
    assert Path(cfg.out).is_absolute() and Path(cfg.data_root).is_absolute()
    assert hparams_of(cfg.model) == {"shrinkage": 10.0}


def test_rating_task_selects_rmse_which_is_minimised():
    cfg = load_config(["task=rating"])
    assert cfg.task.metric == "rmse" and metric_mode("rmse") == "min" and metric_mode("mae") == "min"


@pytest.mark.parametrize("overrides, message", [
    (["model=nosuchmodel"], "nosuchmodel"),
    (["data=nosuchdata"], "nosuchdata"),
    (["train.max_epochs=0"], "train.max_epochs: Input should be greater than 0"),
    (["train.patience=-1"], "train.patience"),
    (["task.mode=max"], "task.mode"),  # the direction belongs to the metric, not to a free key
    (["task=rating", "+task.mode=max"], "task.mode: unknown key"),
    (["model._target_=recsearch.models.nothere.Model"], "cannot be imported"),
    (["nosuchkey=1"], "nosuchkey"),
    (["model=mf", "model.lr=-1"], "model=mf: lr must be > 0"),
    (["model=itemknn", "model.k=2.5"], "model.k: Input should be a valid integer"),
    (["data=ml-100k", "+data.source.directoy=x"], "data.source.directoy: unknown key; known: directory"),
    (["data.split.scheme=weekly"], "data.split.scheme"),
    (["data.split.ratios=[0.5,0.5,0.5]"], "data.split.ratios: must be three shares"),
    (["scheduler.grace_period=x"], "scheduler.grace_period"),
    (["ray.cpus_per_trial=0"], "ray.cpus_per_trial"),
    (["task=rating", "task.implicit_threshold=4"], "task.implicit_threshold: applies to task=ranking only"),
    (["device=gpu"], "device: 'gpu' is not a device"),
    (["out="], "out: String should have at least 1 character"),
])
def test_bad_config_fails_with_a_clear_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides)


# The table of inputs that once gave a traceback or a silently wrong result: each must
# now be one line naming the key (or file) and the problem, with nothing trained or written.
STRICT = [
    (["model=mf", "+model.lrr=0.1"], "model.lrr: unknown key; known: dim, loss, negatives, lr"),
    (["model=mf", "model.lr=abc"], "model.lr: Input should be a valid number"),
    (["seed=abc"], "seed: Input should be a valid integer"),
    (["train.max_epochs=ten"], "train.max_epochs: Input should be a valid integer"),
    (["train.eval_batch_size=abc"], "train.eval_batch_size: Input should be a valid integer"),
    (["train.refit=maybe"], "train.refit: Input should be a valid boolean"),
    (["search.refit=maybe"], "search.refit: Input should be a valid boolean"),
    (["data.preprocess.min_user_interactions=abc"], "data.preprocess.min_user_interactions: Input should be a valid"),
    (["task.implicit_threshold=abc"], "task.implicit_threshold: Input should be a valid number"),
    (["data.split.ratios=abc"], "data.split.ratios: Input should be a valid"),
    (["task.metric=ndcg@7"], "task.metric: 'ndcg@7' is not among the evaluated metrics"),
]


def _fails_in_one_line(argv: list[str], message: str, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsearch: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert message in err, err
    return err


@pytest.mark.parametrize("overrides, message", STRICT)
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_strict_input_is_one_line_before_any_work(command, overrides, message, tmp_path, capsys):
    out = tmp_path / "out"
    _fails_in_one_line([command, *overrides, f"out={out}"], message, capsys)
    assert not out.exists()


def test_a_sweep_refuses_train_refit_and_names_its_own_key(tmp_path, capsys):
    _fails_in_one_line(["sweep", "train.refit=true", f"out={tmp_path}/out"], "a sweep refits its winner with "
                       "search.refit=true", capsys)
    assert not (tmp_path / "out").exists()


def test_a_missing_gpu_is_one_line_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # a data source that would fail if it were read: the device is checked first
    _fails_in_one_line(["train", "device=cuda", "data=table", f"data.source.path={tmp_path}/none.csv",
                        f"out={tmp_path}/out"], "device: 'cuda' was asked for but CUDA is not available", capsys)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unusable_output_folder_is_refused_up_front(command, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    _fails_in_one_line([command, f"out={a_file}"], f"out: {a_file} is a file", capsys)
    _fails_in_one_line([command, f"out={a_file}/run"], f"cannot be created: {a_file} is a file", capsys)
    _fails_in_one_line([command, "out=/proc/recsearch-run"], "out: cannot write in /proc", capsys)


def _atomic(directory: Path, header: str, *rows: str) -> Path:
    directory.mkdir()
    (directory / "x.inter").write_text("\n".join([header, *rows]) + "\n")
    return directory


@pytest.mark.parametrize("header, rows, message", [
    ("user_id:token\titem_id:token\ttimestamp:float", ["1\t2\t100"], "x.inter: the valid part is empty: 1 interactions"),
    ("user_id:token\titem_id:token\titem_id:token", ["1\t2\t3", "2\t3\t4"],
     "x.inter: line 1, column 3: field 'item_id' appears a second time (first in column 2)"),
    ("user_id:token\titem_id:token\ttimestamp:float", ["1\t2\t1e30", "2\t3\t100"],
     "x.inter: line 2, column 3 (timestamp:float): timestamp 1e+30 is out of range"),
])
def test_bad_data_files_are_one_line_naming_the_file(header, rows, message, tmp_path, capsys):
    directory = _atomic(tmp_path / "data", header, *rows)
    err = _fails_in_one_line(["train", "data=ml-100k", f"data.source.directory={directory}", "data.source.name=x",
                              f"out={tmp_path}/out"], message.split(": ", 1)[1], capsys)
    assert str(directory) in err
    assert not (tmp_path / "out").exists()


def test_a_duplicate_column_of_a_table_is_named(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text("user,item,user\n1,2,3\n")
    _fails_in_one_line(["train", "data=table", f"data.source.path={path}", "data.source.columns.user=user",
                        "data.source.columns.item=item", "~data.source.columns.rating", "~data.source.columns.timestamp",
                        f"out={tmp_path}/out"], f"{path}: line 1, column 3: column 'user' appears a second time", capsys)


def test_cli_reports_config_errors_without_traceback(capsys):
    _fails_in_one_line(["train", "model=nosuchmodel"], "nosuchmodel", capsys)
    _fails_in_one_line(["train", "task.mode=max"], "task.mode", capsys)  # Hydra's own two-line message, joined


def test_cli_prints_the_composed_config(capsys):
    assert main(["--cfg", "train", "task=rating"]) == 0
    assert "metric: rmse" in capsys.readouterr().out
