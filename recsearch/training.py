"""One training loop for every model family, for ``recsearch train`` and for each Tune trial.

``train_step`` is one epoch of training (closed-form models: the one fit) followed by a
validation evaluation. ``train`` runs steps under early stopping on the validation metric,
keeps the best epoch's state and restores it at the end; without a stopping rule it trains a set
number of epochs with no validation at all (a refit on train + valid, ``Split.train_and_valid``).
It can start from where an earlier run stopped (``Resume``), and hands every finished epoch to
``on_epoch`` with the states a checkpoint needs: that is all a Tune trial adds (see
``recsearch.tuning.trainable``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from recsearch.evaluation.metrics import metric_mode, valid_key, valid_metrics

if TYPE_CHECKING:
    from recsearch.data.dataset import Split
    from recsearch.evaluation import Evaluator
    from recsearch.models.base import Recommender


def train_step(model: Recommender, split: Split, evaluator: Evaluator | None, epoch: int) -> dict[str, Any]:
    """Train one epoch (closed-form models: fit once) and evaluate on the validation split
    (``evaluator`` None: no evaluation).

    Returns flat metrics: ``epoch``, ``loss`` (iterative models), ``epoch_seconds``,
    ``eval_seconds`` and, when evaluated, ``valid/<metric>`` for every metric of the evaluator. Raises
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
    if evaluator is None:
        return {**result, "eval_seconds": 0.0}
    start = time.perf_counter()
    valid = evaluator.evaluate(model, split, "valid")
    result["eval_seconds"] = time.perf_counter() - start
    result.update({valid_key(name): value for name, value in valid.items()})
    return result


@dataclass
class EarlyStopping:
    """Decides when training stops, from the validation metric of every epoch.

    The best epoch (whose state is kept) is the one with the best raw value. Whether training
    goes on is judged on the metric's trend, an exponential moving average
    ``trend = smoothing * trend + (1 - smoothing) * value`` (``smoothing`` 0: the raw value), so
    that one lucky epoch does not end a slow climb and one unlucky one does not extend a
    finished run. Training stops once the trend has not improved for ``patience`` epochs, or
    for ``patience_ratio`` times the best epoch if that is longer (a run that needed 40 epochs
    to reach its best gets 20 more with 0.5), and never before ``min_epochs``."""

    mode: str  # "max" or "min"
    patience: int
    min_epochs: int = 1
    patience_ratio: float = 0.0
    smoothing: float = 0.0
    best: float | None = None  # the best raw value and its epoch
    best_epoch: int = 0
    trend: float | None = None  # the moving average after the last epoch, and its best so far
    best_trend: float | None = None
    stale: int = 0  # epochs since the trend last improved
    epoch: int = 0  # the last epoch seen

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not 0.0 <= self.smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")

    def _better(self, value: float, than: float | None) -> bool:
        return than is None or (value > than if self.mode == "max" else value < than)

    def update(self, value: float, epoch: int) -> bool:
        """Record an epoch's value; True when it is the best so far."""
        self.epoch = epoch
        better = self._better(value, self.best)
        if better:
            self.best, self.best_epoch = value, epoch
        self.trend = value if self.trend is None else self.smoothing * self.trend + (1 - self.smoothing) * value
        if self._better(self.trend, self.best_trend):
            self.best_trend, self.stale = self.trend, 0
        else:
            self.stale += 1
        return better

    @property
    def patience_now(self) -> int:
        return max(self.patience, math.ceil(self.patience_ratio * self.best_epoch))

    @property
    def should_stop(self) -> bool:
        return self.epoch >= self.min_epochs and self.stale >= self.patience_now


@dataclass
class FixedEpochs(EarlyStopping):
    """Never stops, and every epoch counts as the best, so the last one is kept: training for a
    set number of epochs with nothing left to validate on (a refit on train + valid)."""

    mode: str = "max"  # unused: no value is compared
    patience: int = 0

    def update(self, value: float | None, epoch: int) -> bool:
        self.epoch = self.best_epoch = epoch
        return True

    @property
    def should_stop(self) -> bool:
        return False


@dataclass(frozen=True)
class Stopping:
    """The early-stopping settings of a config's ``train`` section (``conf/config.yaml``)."""

    patience: int
    min_epochs: int = 1
    patience_ratio: float = 0.0
    smoothing: float = 0.0

    @classmethod
    def of(cls, train_cfg) -> Stopping:
        """From ``train``; a key a saved sweep plan predates keeps its default (off)."""
        return cls(**{name: train_cfg[name] for name in ("patience", "min_epochs", "patience_ratio", "smoothing")
                      if name in train_cfg})

    def stopper(self, mode: str) -> EarlyStopping:
        return EarlyStopping(mode, self.patience, self.min_epochs, self.patience_ratio, self.smoothing)


@dataclass
class Resume:
    """Where an interrupted run stands: what a checkpoint holds."""

    epoch: int  # the last epoch trained
    state: bytes  # the model's state after it (serialized)
    best_state: bytes  # the state of the best epoch so far
    best: float | None
    best_epoch: int
    stale: int
    trend: float | None
    best_trend: float | None


@dataclass
class EpochEnd:
    """A finished epoch, as ``train`` hands it to ``on_epoch``."""

    row: dict[str, Any]  # train_step's metrics plus stale_epochs and stopped (the loop ends here)
    state: bytes  # the model's state after this epoch
    best_state: bytes  # the state of the best epoch so far (this one's when it is the best)
    stopper: EarlyStopping  # as it stood after this epoch


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs this run trained
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    fit_seconds: float = 0.0
    stopped_early: bool = False


def serialized(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_serialized(model: Recommender, state: bytes) -> None:
    """Load a state written by ``serialized``: tensors and plain values only (weights_only)."""
    model.load_state(torch.load(io.BytesIO(state), map_location=model.device, weights_only=True))


def train(
    model: Recommender,
    split: Split,
    evaluator: Evaluator,
    metric: str,
    max_epochs: int,
    stopping: Stopping | int | None,
    on_epoch: Callable[[EpochEnd], None] | None = None,
    resume: Resume | None = None,
) -> TrainResult:
    """Prepare ``model`` on the training split and train it under early stopping on the
    validation ``metric`` (its direction from the metric registry; ``stopping``: the settings,
    or a plain patience), from ``resume`` when given; the best epoch's state is restored
    before returning. ``stopping`` None: exactly ``max_epochs`` epochs (closed-form models: one
    fit), the validation part never evaluated, the last epoch kept (a refit)."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    model.prepare(split.train)
    if stopping is None:
        evaluator, stopper = None, FixedEpochs()
    else:
        stopper = (Stopping(stopping) if isinstance(stopping, int) else stopping).stopper(metric_mode(metric))
    result = TrainResult()
    epoch, state, best_state = 0, b"", b""
    if resume is not None:
        load_serialized(model, resume.state)
        epoch, state, best_state = resume.epoch, resume.state, resume.best_state
        stopper.best, stopper.best_epoch, stopper.stale = resume.best, resume.best_epoch, resume.stale
        stopper.trend, stopper.best_trend, stopper.epoch = resume.trend, resume.best_trend, resume.epoch
    last = max_epochs if model.iterative else 1
    while epoch < last and not stopper.should_stop:
        epoch += 1
        row = train_step(model, split, evaluator, epoch)
        improved = stopper.update(row.get(valid_key(metric)), epoch)
        row["stale_epochs"], row["stopped"] = stopper.stale, stopper.should_stop
        result.history.append(row)
        result.fit_seconds += row["epoch_seconds"]
        if improved:
            result.best_valid = valid_metrics(row)
        if improved or on_epoch is not None:  # serialized only when something keeps it
            state = serialized(model.state())
            best_state = state if improved else best_state
        if on_epoch is not None:
            on_epoch(EpochEnd(row, state, best_state, replace(stopper)))  # a snapshot, not the live one
    result.stopped_early = stopper.should_stop and epoch < last
    result.best_epoch = stopper.best_epoch
    if stopper.best_epoch != epoch:
        load_serialized(model, best_state)
    return result


def refit_record(split: Split, epochs: int) -> dict[str, Any]:
    """What the metadata of a model refitted on ``split`` (``Split.train_and_valid``) says of it."""
    return {"on": "train + valid", "epochs": epochs, "interactions": len(split.train.interactions)}


def train_command(cfg) -> dict[str, Any]:
    """``recsearch train``: load and split the data, train one configuration under early
    stopping, evaluate the best epoch on the test split, write ``metrics.json`` and ``model/``.
    With ``train.refit``, a fresh model is trained on train + valid for the best epoch's count
    and that one is tested and saved; the validation figures stay those of the first run."""
    from recsearch.config import to_container
    from recsearch.data import load_split
    from recsearch.evaluation import Evaluator
    from recsearch.models.factory import build_model
    from recsearch.output import check_writable, format_table, write_json
    from recsearch.runtime import configure_threads, resolve_device, seed_everything

    config = to_container(cfg)
    task = config["task"]
    resolve_device(cfg.device)  # a missing GPU is found before the data is read
    check_writable(cfg.out)
    configure_threads()
    seed_everything(cfg.seed)
    split = load_split(config["data"], cfg.seed, task["implicit_threshold"])
    evaluator = Evaluator.for_task(task, batch_size=cfg.train.eval_batch_size)
    model = build_model(config["model"], seed=cfg.seed, device=cfg.device, task=task["name"])

    def show(end: EpochEnd) -> None:
        print(_epoch_line(end.row, task["metric"]), flush=True)

    result = train(model, split, evaluator, task["metric"], cfg.train.max_epochs, Stopping.of(cfg.train), show)
    sizes, refit = split.sizes(), None
    if cfg.train.refit:
        split = split.train_and_valid()
        refit = refit_record(split, result.best_epoch)
        print(f"refit on train + valid ({refit['interactions']} interactions) for {result.best_epoch} epoch(s)",
              flush=True)
        seed_everything(cfg.seed)
        model = build_model(config["model"], seed=cfg.seed, device=cfg.device, task=task["name"])
        train(model, split, evaluator, task["metric"], result.best_epoch, None, show)
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
        "refit": refit,  # None: the tested model is the best epoch of the run above
        "fit_seconds": result.fit_seconds,
        "sizes": sizes,  # the split's, before a refit joins its train and valid parts
        "history": result.history,
    }
    write_json(f"{cfg.out}/metrics.json", metrics)
    saved = ("data", "task", "split", "valid", "test", "best_epoch", "refit")
    model.save(f"{cfg.out}/model", metadata={k: metrics[k] for k in saved})
    names = list(test)
    print(format_table([{"split": "valid", **result.best_valid}, {"split": "test", **test}], ["split", *names]))
    print(f"wrote {cfg.out}/metrics.json and {cfg.out}/model/")
    return metrics


def _epoch_line(step: dict[str, Any], metric: str) -> str:
    """One epoch's line; a refit's epochs have no validation."""
    loss = f" loss {step['loss']:.4f}" if "loss" in step else ""
    if valid_key(metric) not in step:
        return f"epoch {step['epoch']:3d}{loss}  ({step['epoch_seconds']:.2f}s train)"
    return (f"epoch {step['epoch']:3d}{loss}  valid {metric} {step[valid_key(metric)]:.4f}"
            f"  ({step['epoch_seconds']:.2f}s train, {step['eval_seconds']:.2f}s eval)")
