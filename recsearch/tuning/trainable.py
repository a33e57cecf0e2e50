"""The Tune trainable: one trial = one model family with one sampled set of hyperparameters.

Each epoch is ``recsearch.training.train_step`` (closed-form models: one fit, one report),
reported to Tune with a checkpoint so that ASHA can stop the trial between epochs and a killed
or preempted trial resumes where it was. Besides ASHA, the trial stops itself after
``train.patience`` epochs without a better validation metric.

A checkpoint directory describes itself: ``model.pt`` (the model's state after that epoch, what a
resumed trial continues from), ``best.pt`` (the state of the best epoch so far, when that is an
earlier one) and ``progress.json`` (epoch, best epoch and early-stopping counters); states are
read back with ``weights_only=True``. So the newest checkpoint alone serves both resuming and
exporting the trial's best model, and Tune may keep just the newest ones.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from recsearch.data.dataset import Split
from recsearch.models.base import Recommender

STATE_FILE = "model.pt"
BEST_STATE_FILE = "best.pt"
PROGRESS_FILE = "progress.json"


def build_model(setup: dict[str, Any], hparams: dict[str, Any]) -> Recommender:
    """``hydra.utils.instantiate`` of the family's model config with the sampled
    hyperparameters laid over its defaults."""
    from hydra.utils import instantiate

    config = {**setup["model"], **hparams}
    return instantiate(config, seed=setup["seed"], device=setup["device"], task=setup["task"]["name"],
                       _convert_="all")


def run_trial(config: dict[str, Any], split: Split, setup: dict[str, Any]) -> None:
    """Train one configuration under Tune. ``config``: the sampled hyperparameters; ``split``:
    the shared training data (a Ray object reference resolved here); ``setup``: the family's
    plain-dict settings (see ``recsearch.tuning.plan.trial_setup``)."""
    import ray
    from ray import tune

    from recsearch.evaluation import Evaluator
    from recsearch.runtime import configure_threads, seed_everything
    from recsearch.training import EarlyStopping, train_step

    # one "Checkpoint successfully created" line per epoch and trial drowns the progress output
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    if isinstance(split, ray.ObjectRef):
        split = ray.get(split)
    configure_threads()  # Ray sets OMP_NUM_THREADS to the trial's CPUs
    seed_everything(setup["seed"])
    task, train = setup["task"], setup["train"]
    model = build_model(setup, config)
    model.prepare(split.train)
    evaluator = Evaluator.for_task(task, batch_size=train["eval_batch_size"])
    metric = f"valid/{task['metric']}"
    stopper = EarlyStopping(metric, task["mode"], train["patience"])
    start, best_state = 1, b""  # best_state: the best epoch's serialized state
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = restore(model, stopper, Path(directory)) + 1
            best_state = best_state_file(Path(directory)).read_bytes()
    last = train["max_epochs"] if model.iterative else 1
    for epoch in range(start, last + 1):
        step = train_step(model, split, evaluator, epoch)
        stopper.update(step[metric], epoch)
        step["stale_epochs"] = stopper.stale
        state = serialized(model.state())
        if stopper.best_epoch == epoch:
            best_state = state
        with tempfile.TemporaryDirectory(prefix="recsearch-ckpt-") as directory:
            save(stopper, epoch, step[metric], Path(directory), state, best_state)
            tune.report(step, checkpoint=tune.Checkpoint.from_directory(directory))
        if stopper.should_stop:
            break


def serialized(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save(stopper, epoch: int, value: float, directory: Path, state: bytes, best_state: bytes) -> None:
    """Write a checkpoint of ``epoch`` from serialized states; ``best_state`` goes into
    ``best.pt`` unless this epoch is the best."""
    (directory / STATE_FILE).write_bytes(state)
    if stopper.best_epoch != epoch:
        (directory / BEST_STATE_FILE).write_bytes(best_state)
    progress = {"epoch": epoch, "value": value, "best": stopper.best, "best_epoch": stopper.best_epoch,
                "stale": stopper.stale}
    (directory / PROGRESS_FILE).write_text(json.dumps(progress))


def restore(model: Recommender, stopper, directory: Path) -> int:
    """Load a checkpoint into a prepared model and the stopper; returns its epoch."""
    load_weights(model, directory / STATE_FILE)
    progress = read_progress(directory)
    stopper.best, stopper.best_epoch, stopper.stale = progress["best"], progress["best_epoch"], progress["stale"]
    return int(progress["epoch"])


def best_state_file(directory: Path) -> Path:
    """The checkpoint's state of its best epoch so far."""
    best = directory / BEST_STATE_FILE
    return best if best.exists() else directory / STATE_FILE


def load_weights(model: Recommender, path: Path) -> None:
    model.load_state(torch.load(path, map_location=model.device, weights_only=True))


def read_progress(directory: Path) -> dict[str, Any]:
    return json.loads((directory / PROGRESS_FILE).read_text())
