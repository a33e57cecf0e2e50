"""Hydra configuration: composing ``conf/`` with command-line overrides, and checks that fail
before any data is read or Ray is started."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recsearch.errors import ConfigError
from recsearch.schema import check_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

if not OmegaConf.has_resolver("now"):  # what @hydra.main registers; the compose API does not
    OmegaConf.register_new_resolver("now", lambda pattern: datetime.now().strftime(pattern), use_cache=True)


def conf_dir() -> Path:
    """``RECSEARCH_CONF_DIR`` when set, else the ``conf/`` beside the package (source checkout
    or editable install)."""
    path = Path(os.environ.get("RECSEARCH_CONF_DIR", CONF_DIR)).resolve()
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"no config.yaml in {path}: set RECSEARCH_CONF_DIR to recsearch's conf/ folder")
    return path


def load_config(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the config with Hydra overrides (``model=mf train.max_epochs=5``), resolve every
    interpolation once, and make ``out`` and ``data_root`` absolute: later steps (Tune trials,
    Ray workers) run in other working directories."""
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="recsearch"):
            cfg = compose(config_name=config_name, overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"bad configuration: {' '.join(str(err).split())}") from None  # one line
    validate(cfg)
    cfg.out = str(Path(cfg.out).expanduser().resolve())
    cfg.data_root = str(Path(cfg.data_root).expanduser().resolve())
    return cfg


def validate(cfg: DictConfig) -> None:
    """Every key against ``recsearch.schema``, then what spans keys: the model (built on the
    CPU, allocating nothing), the data config, the selection metric and the device's name."""
    from recsearch.data import check_config as check_data_config
    from recsearch.evaluation import Evaluator
    from recsearch.models.factory import build_model
    from recsearch.runtime import parse_device

    config = to_container(cfg)
    check_config(config)
    parse_device(config["device"])
    task = config["task"]
    build_model(config["model"], seed=config["seed"], device="cpu", task=task["name"])
    check_data_config(config["data"])
    names = Evaluator.for_task(task, batch_size=config["train"]["eval_batch_size"]).names
    if task["metric"] not in names:
        raise ConfigError(f"task.metric: {task['metric']!r} is not among the evaluated metrics: {', '.join(names)} "
                          "(set task.metrics and task.ks)")
    if task["name"] == "rating" and task["implicit_threshold"] is not None:
        raise ConfigError("task.implicit_threshold: applies to task=ranking only (ratings are kept as they are)")


def to_container(cfg: DictConfig | Any) -> Any:
    """Plain dicts and lists, safe to pickle into Ray and to dump as JSON."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
