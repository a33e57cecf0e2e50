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
        raise ConfigError(f"bad configuration: {err}") from None
    cfg.out = str(Path(cfg.out).expanduser().resolve())
    cfg.data_root = str(Path(cfg.data_root).expanduser().resolve())
    validate(cfg)
    return cfg


def validate(cfg: DictConfig) -> None:
    """Cheap semantic checks of the composed config."""
    from recsearch.models.base import model_class

    task = cfg.task.name
    if task not in ("ranking", "rating"):
        raise ConfigError(f"task.name must be 'ranking' or 'rating', got {task!r}")
    if cfg.task.mode not in ("max", "min"):
        raise ConfigError(f"task.mode must be 'max' or 'min', got {cfg.task.mode!r}")
    if "_target_" not in cfg.model:
        raise ConfigError("model has no _target_: pick a model config, e.g. model=mf")
    cls = _target_class(cfg.model._target_)
    if task not in getattr(cls, "tasks", ()):
        raise ConfigError(f"model {cls.__name__} does not support task={task} (it supports: {', '.join(cls.tasks)})")
    model_class(cls.family)  # the class must be a registered family, so that saved models reload
    try:  # constructors check their hyperparameters; nothing is allocated before fit
        cls(**model_params(cfg), seed=cfg.seed, device="cpu", task=task)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model={cls.family}: {err}") from None
    for key in ("max_epochs", "patience", "eval_batch_size"):
        if int(cfg.train[key]) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {cfg.train[key]}")
    from recsearch.data import check_config

    check_config(to_container(cfg.data))


def _target_class(target: str) -> type:
    from hydra.utils import get_class

    try:
        return get_class(target)
    except Exception as err:  # hydra raises ImportError or ValueError, wrapped variously
        raise ConfigError(f"model._target_ {target!r} cannot be imported: {err}") from None


def to_container(cfg: DictConfig | Any) -> Any:
    """Plain dicts and lists, safe to pickle into Ray and to dump as JSON."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def model_params(cfg: DictConfig) -> dict[str, Any]:
    """The model's constructor arguments: its config without ``_target_``."""
    return {k: v for k, v in to_container(cfg.model).items() if k != "_target_"}
