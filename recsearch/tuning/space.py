"""Search spaces written in YAML, turned into Ray Tune samplers.

A space maps every hyperparameter to exactly one sampler, written as a one-key mapping::

    lr:         {loguniform: [1.0e-4, 1.0e-1]}  # floats, log-uniform in [low, high)
    dropout:    {uniform: [0.0, 0.5]}           # floats, uniform in [low, high)
    l2:         {quniform: [0.0, 0.1, 0.01]}    # floats in [low, high], rounded to multiples of q
    negatives:  {randint: [1, 8]}               # integers low..high, both ends included
    dim:        {lograndint: [8, 256]}          # integers low..high, log-uniform, both ends included
    k:          {qrandint: [10, 200, 10]}       # integers low..high, multiples of q, both ends included
    optimizer:  {choice: [adam, adagrad]}       # one value drawn per trial (values may be lists)
    similarity: {grid: [cosine, jaccard]}       # every value, each with ``num_samples`` trials

Integer upper bounds are inclusive for all three integer samplers (Tune's own ``randint``
excludes its upper bound; ``qrandint`` includes it): in a config, what is written is what is
searched. Everything is checked here, before Ray starts, and reported as a ``ConfigError``
naming the offending key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from recsearch.errors import ConfigError

_BOUNDED = {"uniform": 2, "quniform": 3, "loguniform": 2, "randint": 2, "lograndint": 2, "qrandint": 3}
_LISTED = ("choice", "grid")
SAMPLERS = (*_BOUNDED, *_LISTED)


@dataclass(frozen=True)
class Sampler:
    """One validated sampler: its kind and arguments (bounds, or the listed values)."""

    kind: str
    args: tuple

    @property
    def categorical(self) -> bool:
        return self.kind in _LISTED

    @property
    def log_scale(self) -> bool:
        return self.kind in ("loguniform", "lograndint")

    def allows(self, value: Any) -> bool:
        """Whether ``value`` lies in this sampler's domain (a listed value, or within the bounds)."""
        if self.categorical:
            return value in self.args
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        integral = self.kind in ("randint", "lograndint", "qrandint")
        return self.args[0] <= value <= self.args[1] and (not integral or float(value).is_integer())

    def examples(self) -> list[Any]:
        """Values this sampler can draw that show what it draws: every listed value; for a range
        its bounds and, for continuous samplers, a value between them (a float, where an
        integer hyperparameter would be refused)."""
        if self.categorical:
            return list(self.args)
        low, high = self.args[:2]
        if self.kind in ("uniform", "loguniform"):
            return [low, high, low + 0.371 * (high - low)]
        if self.kind == "quniform":
            q = self.args[2]
            return [low, high, round((low + 0.371 * (high - low)) / q) * q]
        return [low, high]

    def to_tune(self):
        from ray import tune

        a = self.args
        if self.kind == "grid":
            return tune.grid_search(list(a))
        if self.kind == "choice":
            return tune.choice(list(a))
        if self.kind in ("randint", "lograndint"):  # Tune excludes the upper bound of these two
            return getattr(tune, self.kind)(a[0], a[1] + 1)
        return getattr(tune, self.kind)(*a)


def parse_space(raw: Any, where: str = "search.space") -> dict[str, Sampler]:
    """Validate a YAML space (a mapping of name -> one-key sampler mapping)."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError(f"{where} must be a non-empty mapping of hyperparameter -> sampler, got {raw!r}")
    return {str(name): parse_sampler(spec, f"{where}.{name}") for name, spec in raw.items()}


def parse_sampler(spec: Any, where: str) -> Sampler:
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ConfigError(
            f"{where}: expected one sampler such as {{loguniform: [1.0e-4, 1.0e-1]}} or {{choice: [a, b]}}, "
            f"got {spec!r} (to fix a value, set it in the model config instead)"
        )
    (kind, args), = spec.items()
    if kind not in SAMPLERS:
        raise ConfigError(f"{where}: unknown sampler {kind!r}; known: {', '.join(SAMPLERS)}")
    if kind in _LISTED:
        if not isinstance(args, (list, tuple)) or not args:
            raise ConfigError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return Sampler(kind, tuple(args))
    return Sampler(kind, _bounds(kind, args, where))


def _bounds(kind: str, args: Any, where: str) -> tuple:
    arity = _BOUNDED[kind]
    names = "[low, high, q]" if arity == 3 else "[low, high]"
    if not isinstance(args, (list, tuple)) or len(args) != arity:
        raise ConfigError(f"{where}: {kind} takes {names}, got {args!r}")
    integer = kind.endswith("randint")
    for value in args:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {kind} bounds must be finite numbers, got {value!r}")
        if integer and value != int(value):
            raise ConfigError(f"{where}: {kind} bounds must be integers, got {value!r}")
    values = tuple(int(v) for v in args) if integer else tuple(float(v) for v in args)
    low, high = values[:2]
    if (low > high) if integer else (low >= high):
        raise ConfigError(f"{where}: {kind} needs low {'<=' if integer else '<'} high, got low={low} high={high}")
    if kind.startswith("log") and low <= 0:
        raise ConfigError(f"{where}: {kind} needs low > 0 (a log scale), got low={low}")
    if arity == 3 and values[2] <= 0:
        raise ConfigError(f"{where}: {kind} needs a step q > 0, got q={values[2]}")
    return values


def tune_space(space: Mapping[str, Sampler]) -> dict[str, Any]:
    """The Tune param space: one Tune domain (or grid) per hyperparameter."""
    return {name: sampler.to_tune() for name, sampler in space.items()}


def default_point(space: Mapping[str, Sampler], model: Mapping[str, Any]) -> dict[str, Any]:
    """The model config's own values of the searched hyperparameters, where the space allows
    them: the first trial of a sweep that starts from the defaults. Others are sampled, and so
    are list values (NCF's layers), which Tune cannot preset."""
    return {name: model[name] for name, sampler in space.items()
            if sampler.kind != "grid" and name in model and not isinstance(model[name], (list, tuple))
            and sampler.allows(model[name])}


def check_algorithm(space: Mapping[str, Sampler], algorithm: str, where: str = "search.space") -> None:
    """Fail early on combinations Tune would reject mid-run."""
    if algorithm not in ("random", "optuna"):
        raise ConfigError(f"search.algorithm must be 'random' or 'optuna', got {algorithm!r}")
    grids = [name for name, sampler in space.items() if sampler.kind == "grid"]
    if algorithm == "optuna" and grids:
        raise ConfigError(
            f"{where}: search.algorithm=optuna cannot take grid samplers ({', '.join(grids)}): Optuna TPE "
            "draws each value, it does not enumerate a grid; write {choice: [...]} instead, or use "
            "search.algorithm=random"
        )
