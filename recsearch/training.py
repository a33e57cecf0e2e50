"""One training loop for every model family.

``train_step`` is the unit of work: one epoch of training (or, for closed-form models, the one
fit) followed by a validation evaluation. ``recsearch train`` runs it under early stopping;
each Tune trial calls the very same function once per reported epoch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsearch.data.dataset import Split
    from recsearch.evaluation import Evaluator
    from recsearch.models.base import Recommender


def train_step(model: Recommender, split: Split, evaluator: Evaluator, epoch: int) -> dict[str, Any]:
    """Train one epoch (closed-form models: fit once) and evaluate on the validation split.

    Returns flat metrics: ``epoch``, ``loss`` (iterative models), ``epoch_seconds``,
    ``eval_seconds`` and ``valid/<metric>`` for every metric of the evaluator. Raises
    ``FloatingPointError`` when the training loss is not finite, so a diverged trial errors out
    instead of reporting garbage."""
    start = time.perf_counter()
    result: dict[str, Any] = {"epoch": epoch}
    if model.iterative:
        loss = float(model.train_epoch())
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss} at epoch {epoch}: the model diverged")
        result["loss"] = loss
    else:
        model.fit_prepared()
    result["epoch_seconds"] = time.perf_counter() - start
    start = time.perf_counter()
    valid = evaluator.evaluate(model, split, "valid")
    result["eval_seconds"] = time.perf_counter() - start
    result.update({f"valid/{name}": value for name, value in valid.items()})
    return result


@dataclass
class EarlyStopping:
    """Tracks the best value of the selection metric and counts epochs without improvement."""

    metric: str
    mode: str  # "max" or "min"
    patience: int
    best: float | None = None
    best_epoch: int = 0
    stale: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch, self.stale = value, epoch, 0
        else:
            self.stale += 1
        return better

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    stopped_early: bool = False


def train(
    model: Recommender,
    split: Split,
    evaluator: Evaluator,
    metric: str,
    mode: str,
    max_epochs: int,
    patience: int,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Prepare ``model`` on the training split and train it under early stopping on the
    validation ``metric``; the best epoch's state is restored before returning."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    model.prepare(split.train)
    stopper = EarlyStopping(metric, mode, patience)
    result = TrainResult()
    best_state = None
    for epoch in range(1, (max_epochs if model.iterative else 1) + 1):
        step = train_step(model, split, evaluator, epoch)
        result.history.append(step)
        result.fit_seconds += step["epoch_seconds"]
        if on_epoch is not None:
            on_epoch(step)
        if stopper.update(step[f"valid/{metric}"], epoch):
            result.best_valid = {k.removeprefix("valid/"): v for k, v in step.items() if k.startswith("valid/")}
            best_state = copy.deepcopy(model.state()) if model.iterative else None
        if stopper.should_stop:
            result.stopped_early = epoch < max_epochs
            break
    if best_state is not None:
        model.load_state(best_state)
    result.best_epoch = stopper.best_epoch
    return result


def train_command(cfg) -> dict[str, Any]:
    """``recsearch train``: load and split the data, train one configuration under early
    stopping, evaluate the best epoch on the test split, write ``metrics.json`` and ``model/``."""
    from hydra.utils import instantiate

    from recsearch.config import to_container
    from recsearch.data import load_split
    from recsearch.evaluation import Evaluator
    from recsearch.output import format_table, write_json
    from recsearch.runtime import configure_threads, seed_everything

    configure_threads()
    seed_everything(cfg.seed)
    split = load_split(to_container(cfg.data), seed=cfg.seed, implicit_threshold=_implicit_threshold(cfg))
    evaluator = Evaluator.for_task(to_container(cfg.task), batch_size=cfg.train.eval_batch_size)
    model = instantiate(cfg.model, seed=cfg.seed, device=cfg.device, task=cfg.task.name, _convert_="all")
    result = train(
        model, split, evaluator, cfg.task.metric, cfg.task.mode, cfg.train.max_epochs, cfg.train.patience,
        on_epoch=lambda step: print(_epoch_line(step, cfg.task.metric), flush=True),
    )
    test = evaluator.evaluate(model, split, "test")
    metrics = {
        "model": model.family,
        "data": cfg.data.name,
        "task": cfg.task.name,
        "split": split.scheme,
        "seed": cfg.seed,
        "hparams": model.hparams,
        "valid": result.best_valid,
        "test": test,
        "epochs": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "fit_seconds": result.fit_seconds,
        "sizes": split.sizes(),
        "history": result.history,
    }
    write_json(f"{cfg.out}/metrics.json", metrics)
    model.save(f"{cfg.out}/model", metadata={k: metrics[k] for k in ("data", "task", "split", "valid", "test", "best_epoch")})
    names = list(test)
    print(format_table([{"split": "valid", **result.best_valid}, {"split": "test", **test}], ["split", *names]))
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/model/")
    return metrics


def _implicit_threshold(cfg) -> float | None:
    return cfg.task.implicit_threshold if cfg.task.name == "ranking" else None


def _epoch_line(step: dict[str, Any], metric: str) -> str:
    loss = f" loss {step['loss']:.4f}" if "loss" in step else ""
    return (f"epoch {step['epoch']:3d}{loss}  valid {metric} {step[f'valid/{metric}']:.4f}"
            f"  ({step['epoch_seconds']:.2f}s train, {step['eval_seconds']:.2f}s eval)")
