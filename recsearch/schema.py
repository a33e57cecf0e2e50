"""The shape of recsearch's configuration: every key of ``conf/``, its type and its bounds.

Hydra composes the YAML (where the defaults and their comments live); these pydantic models
say what each key may hold. The composed config is checked once, before any data is read or
Ray starts, and the first problems come back as one line naming the key: a typo
(``+model.lrr=0.1``), a wrong type (``train.max_epochs=ten``) or a value out of range. Model
hyperparameters and data readers are checked against the signature of the class or function
their ``_target_`` names, so adding one needs no schema of its own.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    create_model,
)

from recsearch.errors import ConfigError


class Section(BaseModel):
    """A config section: unknown keys are errors, values are coerced only where lossless."""

    # a number where a string is expected (data.name=100) is still unambiguous
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, coerce_numbers_to_str=True)


class RayConfig(Section):
    address: str | None
    num_cpus: NonNegativeInt | None
    num_gpus: NonNegativeInt | None
    object_store_memory: PositiveInt | None
    include_dashboard: bool
    cpus_per_trial: PositiveFloat
    gpus_per_trial: NonNegativeFloat
    max_concurrent_trials: PositiveInt | None
    storage_path: str | None
    max_failures: int = Field(ge=-1)
    resume: bool
    verbose: int = Field(ge=0, le=3)


class TrainConfig(Section):
    max_epochs: PositiveInt
    patience: PositiveInt
    min_epochs: PositiveInt
    patience_ratio: NonNegativeFloat
    smoothing: float = Field(ge=0.0, lt=1.0)
    eval_batch_size: PositiveInt
    refit: bool


class TaskConfig(Section):
    name: Literal["ranking", "rating"]
    metric: str
    metrics: list[str]
    ks: list[PositiveInt]
    implicit_threshold: float | None


class DataConfig(Section):
    name: str
    # each checked against the signature of what it configures: the reader its _target_ names,
    # recsearch.data.preprocess.preprocess and .split (whose defaults fill what is left out)
    source: dict[str, Any]
    preprocess: dict[str, Any] = {}
    split: dict[str, Any] = {}


class ReevaluateConfig(Section):
    enabled: bool
    top: PositiveInt
    seeds: PositiveInt
    epochs: Literal["chosen", "early_stopping"]


class BlendConfig(Section):
    enabled: bool
    weights: list[PositiveFloat] = Field(min_length=1)
    max_steps: PositiveInt


class SearchConfig(Section):
    models: list[str] | None
    family_overrides: dict[str, list[str]] | None
    num_samples: PositiveInt
    algorithm: Literal["random", "optuna"]
    start_from_defaults: bool
    reevaluate: ReevaluateConfig
    blend: BlendConfig
    refit: bool
    space: dict[str, Any]  # samplers, checked by recsearch.tuning.space


class AshaConfig(Section):
    name: Literal["asha"]
    grace_period: PositiveInt
    reduction_factor: int = Field(ge=2)
    max_t: PositiveInt


class FifoConfig(Section):
    name: Literal["fifo"]


SCHEDULERS: dict[str, type[Section]] = {"asha": AshaConfig, "fifo": FifoConfig}


class Config(Section):
    seed: int
    device: str
    data_root: str = Field(min_length=1)
    out: str = Field(min_length=1)
    ray: RayConfig
    train: TrainConfig
    task: TaskConfig
    data: DataConfig
    model: dict[str, Any]  # checked against its class's constructor (recsearch.models.factory)
    scheduler: dict[str, Any]  # checked by SCHEDULERS[name]
    search: SearchConfig | None = None  # absent when the model has no conf/search/<family>.yaml


def check(schema: type[BaseModel], values: Any, where: str = "") -> BaseModel:
    """``values`` validated by ``schema``; a ``ConfigError`` naming every bad key otherwise."""
    try:
        return schema.model_validate(values)
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(error, schema, where) for error in err.errors())) from None


def check_config(config: Mapping[str, Any]) -> Config:
    """The whole composed config (plain containers): sections, then the scheduler."""
    checked = check(Config, config)
    name = config["scheduler"].get("name")
    if name not in SCHEDULERS:
        raise ConfigError(f"scheduler.name: must be one of {', '.join(SCHEDULERS)}, got {name!r}")
    check(SCHEDULERS[name], config["scheduler"], "scheduler")
    return checked


def check_arguments(function: Callable, values: Mapping[str, Any], where: str,
                    skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` checked against the annotated parameters of ``function`` (a class: its
    constructor, with those its ``**kwargs`` pass on to its bases), returned with lossless
    coercions applied (``1`` for a float becomes ``1.0``). Unknown names are errors."""
    schema = _signature_schema(function, skip)
    values = {k: v.item() if hasattr(v, "item") and not hasattr(v, "__len__") else v  # numpy scalars
              for k, v in values.items()}
    checked = check(schema, values, where)
    return {name: getattr(checked, name) for name in values}


def parameters(function: Callable, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """Named parameters of ``function`` or of a class's constructor chain: a class whose
    ``__init__`` takes ``**kwargs`` passes them to the next ``__init__`` of its MRO, until one
    without ``**kwargs`` (or recsearch's ``Recommender``, whose ``**hparams`` collects them)."""
    found: dict[str, inspect.Parameter] = {}
    callables = [c.__dict__["__init__"] for c in function.__mro__ if "__init__" in c.__dict__] \
        if inspect.isclass(function) else [function]
    for call in callables:
        if call is object.__init__:
            break
        hints = typing.get_type_hints(call, include_extras=True)
        passes_on = False
        for name, param in inspect.signature(call).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                passes_on = True
            elif param.kind is not param.VAR_POSITIONAL and name not in ("self", *skip) and name not in found:
                found[name] = param.replace(annotation=hints.get(name, Any))
        if not passes_on or getattr(call, "__qualname__", "") == "Recommender.__init__":
            break
    return found


@cache
def _signature_schema(function: Callable, skip: tuple[str, ...]) -> type[BaseModel]:
    fields = {name: (param.annotation, ... if param.default is param.empty else param.default)
              for name, param in parameters(function, skip).items()}
    return create_model(getattr(function, "__name__", "arguments"), __base__=Section, **fields)


def _describe(error: dict[str, Any], schema: type[BaseModel], where: str) -> str:
    """One pydantic error as ``key.path: what is wrong (got value)``."""
    key = ".".join(str(part) for part in (where, *error["loc"]) if part != "")
    if error["type"] == "extra_forbidden":
        for part in error["loc"][:-1]:  # the section that has no such key (Optional unwrapped)
            annotation = schema.model_fields[part].annotation
            schema = next(a for a in (annotation, *typing.get_args(annotation)) if inspect.isclass(a))
        return f"{key}: unknown key; known: {', '.join(schema.model_fields)}"
    if error["type"] == "missing":
        return f"{key}: missing"
    got = error.get("input")
    return f"{key}: {error['msg']} (got {got!r})"
