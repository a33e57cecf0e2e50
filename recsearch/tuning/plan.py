"""A sweep's plan: the composed config of every family it searches, checked before Ray starts.

``recsearch sweep model=mf`` searches one family with ``conf/search/mf.yaml``;
``recsearch sweep search.models=[itemknn,mf]`` composes the same overrides once per family
(``model=<family>``, hence that family's model defaults, ``train`` settings and search space,
plus that family's ``search.family_overrides``) and ranks all their trials together. The plan is saved as ``sweep.json`` in the sweep's folder,
so ``recsearch resume DIR`` and ``recsearch report DIR`` need nothing else.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from recsearch.config import load_config, to_container
from recsearch.errors import ConfigError
from recsearch.models.factory import build_model, target_class
from recsearch.tuning.space import Sampler, check_algorithm, parse_space

PLAN_FILE = "sweep.json"


@dataclass
class SweepPlan:
    name: str  # the sweep folder's name, recorded in the exported model
    out: str  # absolute sweep folder: sweep.json, leaderboard.csv, report.html, summary.json, best/
    storage: str  # where the Tune experiments live: <storage>/<family> (a folder or a URI)
    overrides: list[str]
    configs: dict[str, dict[str, Any]]  # family -> its composed config, plain containers
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    @property
    def families(self) -> list[str]:
        return list(self.configs)

    @property
    def first(self) -> dict[str, Any]:
        """Settings every family shares (data, task, seed, ray): same overrides, same values."""
        return next(iter(self.configs.values()))

    def experiment_path(self, family: str) -> str:
        return f"{self.storage.rstrip('/')}/{family}"

    def space(self, family: str) -> dict[str, Sampler]:
        return parse_space(self.configs[family]["search"]["space"], f"search.space of {family}")

    def save(self) -> Path:
        path = Path(self.out) / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        partial.replace(path)  # atomic: a reader never sees half a plan
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SweepPlan:
        path = Path(directory).expanduser().resolve() / PLAN_FILE
        if not path.is_file():
            raise ConfigError(f"{path.parent} is not a sweep folder: it has no {PLAN_FILE}")
        try:
            return cls(**json.loads(path.read_text()))
        except (TypeError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is not a sweep plan this version of recsearch reads: {err}") from None


def plan_sweep(overrides: list[str]) -> SweepPlan:
    """Compose and check every family's config; raises ``ConfigError`` on anything that could
    only fail later inside Ray."""
    overrides = list(overrides)
    base = load_config(overrides)
    models = base.search.get("models") if "search" in base else None
    if models:
        if len(set(models)) != len(models):
            raise ConfigError(f"search.models must be a list of distinct model families, got {models!r}")
        if any(o.split("=", 1)[0].lstrip("+~") == "search" for o in overrides):
            raise ConfigError("search=NAME picks one search space; with search.models every family uses "
                              "conf/search/<family>.yaml")
        pinned = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in ("model", "out")]
        extra = to_container(base.search.get("family_overrides")) or {}
        if set(extra) - set(models):
            raise ConfigError(f"search.family_overrides: {', '.join(sorted(set(extra) - set(models)))} "
                              f"not among search.models {list(models)}")
        # one `out` for all: `${now:...}` would otherwise differ between the compositions
        cfgs = {str(m): _compose(str(m), [*pinned, f"model={m}", *extra.get(m, []), f"out={base.out}"])
                for m in models}
    else:
        cfgs = {target_class(base.model).family: base}
    configs = {family: _check_family(family, cfg) for family, cfg in cfgs.items()}
    if base.search.blend.enabled and (len(configs) < 2 or base.task.name != "ranking"):
        raise ConfigError("search.blend blends the winners of several families of a ranking sweep: "
                          "list two or more in search.models, e.g. search.models=[ease,mf]")
    ray_cfg = base.ray
    _check_ray(ray_cfg, base.device)
    out = Path(base.out)
    if ray_cfg.storage_path is None:
        storage = str(out / "tune")
    elif "://" in str(ray_cfg.storage_path):
        storage = f"{str(ray_cfg.storage_path).rstrip('/')}/{out.name}"
    else:
        storage = str(Path(ray_cfg.storage_path).expanduser().resolve() / out.name)
    return SweepPlan(name=out.name, out=str(out), storage=storage, overrides=overrides, configs=configs)


def _compose(family: str, overrides: list[str]) -> DictConfig:
    try:
        return load_config(overrides)
    except ConfigError as err:
        raise ConfigError(f"search.models, family {family!r}: {err}") from None


def trial_setup(plan: SweepPlan, family: str) -> dict[str, Any]:
    """What a trial of ``family`` needs besides its sampled hyperparameters, as plain values."""
    config = plan.configs[family]
    return {
        "model": config["model"],
        "seed": config["seed"],
        "device": config["device"],
        "task": config["task"],
        "train": config["train"],
    }


def _check_family(family: str, cfg: DictConfig) -> dict[str, Any]:
    """What a sweep adds to ``load_config``'s checks: a search space whose every sampler can
    only draw values the model takes, and a scheduler that fits the epoch budget."""
    if "search" not in cfg or "space" not in cfg.search:
        raise ConfigError(f"no search space for model family {family!r}: add conf/search/{family}.yaml "
                          "(or pick one with search=NAME)")
    where = f"search.space of {family}"
    space = parse_space(to_container(cfg.search.space), where)
    check_algorithm(space, cfg.search.algorithm, where)
    cls = target_class(cfg.model)
    model_cfg = to_container(cfg.model)
    for name, sampler in space.items():
        for value in sampler.examples():  # each built as a model: types and the constructor's checks
            try:
                build_model(model_cfg, seed=cfg.seed, device="cpu", task=cfg.task.name, **{name: value})
            except ConfigError as err:
                raise ConfigError(f"{where}: {name} {sampler.kind} {list(sampler.args)} can draw {value!r}, "
                                  f"which {cls.__name__} does not take ({err})") from None
    _check_scheduler(cfg.scheduler, cfg.train.max_epochs)
    if cfg.train.refit:  # silently ignored otherwise
        raise ConfigError("train.refit is for `recsearch train`; a sweep refits its winner with search.refit=true")
    config = to_container(cfg)
    config["iterative"] = bool(cls.iterative)  # read by the report: a closed-form fit is never "stopped"
    return config


def _check_scheduler(scheduler: DictConfig, max_epochs: int) -> None:
    """ASHA's rungs within the epoch budget (its keys' types are checked by recsearch.schema)."""
    if scheduler.name == "asha":
        if scheduler.grace_period > scheduler.max_t:
            raise ConfigError(f"scheduler.grace_period ({scheduler.grace_period}) must not exceed "
                              f"scheduler.max_t ({scheduler.max_t}); it defaults to train.min_epochs, the "
                              "family's warm-up: lower that, or set scheduler.grace_period")
        if scheduler.max_t > max_epochs:
            raise ConfigError(f"scheduler.max_t ({scheduler.max_t}) exceeds train.max_epochs ({max_epochs}): "
                              "no trial runs that long")


def _check_ray(ray_cfg: DictConfig, device: str) -> None:
    gpus = ray_cfg.gpus_per_trial
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"ray.gpus_per_trial above 1 must be a whole number, got {gpus}")
    if str(device).startswith("cuda") and gpus == 0:
        raise ConfigError(f"device={device} but ray.gpus_per_trial=0: trials would see no GPU; "
                          "set ray.gpus_per_trial (e.g. 1 or 0.25)")
