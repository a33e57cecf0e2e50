"""The one way a model is built: from a model config (``_target_`` plus hyperparameters) or from
a family and its hyperparameters (a saved model, a sweep trial). Hyperparameters are checked
against the constructor's annotated signature first, so a typo or a wrong type is a
``ConfigError`` naming ``model.<key>``, and the constructor's own checks (``lr > 0``) are
reported the same way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recsearch.errors import ConfigError
from recsearch.models.base import Recommender, model_class
from recsearch.schema import check_arguments

COMMON = ("seed", "device", "task")  # set by the caller, never hyperparameters


def target_class(model_cfg: Mapping[str, Any]) -> type[Recommender]:
    """The registered model class that ``model_cfg["_target_"]`` names."""
    from hydra.utils import get_class

    target = model_cfg.get("_target_")
    if not target:
        raise ConfigError("model has no _target_: pick a model config, e.g. model=mf")
    try:
        cls = get_class(target)
    except Exception as err:  # hydra raises ImportError or ValueError, wrapped variously
        raise ConfigError(f"model._target_ {target!r} cannot be imported: {err}") from None
    if not (isinstance(cls, type) and issubclass(cls, Recommender)):
        raise ConfigError(f"model._target_ {target!r} is not a recsearch Recommender")
    try:  # a registered family, so that a saved model reloads
        model_class(cls.family)
    except ValueError as err:
        raise ConfigError(f"model._target_ {target!r}: {err}") from None
    return cls


def hparams_of(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a model config: all but ``_target_``."""
    return {k: v for k, v in model_cfg.items() if k != "_target_"}


def check_hparams(cls: type[Recommender], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """``hparams`` checked against ``cls``'s constructor and coerced where lossless."""
    return check_arguments(cls, hparams, "model", skip=COMMON)


def create(cls: type[Recommender], hparams: Mapping[str, Any], *, seed: int = 0, device: str = "auto",
           task: str = "ranking") -> Recommender:
    """A model of class ``cls`` with ``hparams`` (the constructor's defaults for the rest)."""
    if task not in cls.tasks:
        raise ConfigError(f"model={cls.family} does not support task={task} (it supports: {', '.join(cls.tasks)})")
    hparams = check_hparams(cls, hparams)
    try:
        return cls(**hparams, seed=seed, device=device, task=task)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model={cls.family}: {err}") from None


def build_model(model_cfg: Mapping[str, Any], *, seed: int = 0, device: str = "auto", task: str = "ranking",
                **hparams: Any) -> Recommender:
    """The model a config describes, with ``hparams`` (a trial's sampled values) laid over it."""
    return create(target_class(model_cfg), {**hparams_of(model_cfg), **hparams}, seed=seed, device=device,
                  task=task)
