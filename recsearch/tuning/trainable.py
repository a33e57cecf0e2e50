"""The Tune trainable: one trial = one model family with one sampled set of hyperparameters.

Each epoch is ``recsearch.training.train_step`` (closed-form models: one fit, one report),
reported to Tune with a checkpoint so that ASHA can stop the trial between epochs and a killed
or preempted trial resumes where it was. Besides ASHA, the trial stops itself after
``train.patience`` epochs without a better validation metric.

A checkpoint directory holds ``model.pt`` (the model's state, read back with
``weights_only=True``) and ``progress.json`` (epoch and early-stopping counters).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from recsearch.data.dataset import Split
from recsearch.models.base import Recommender

STATE_FILE = "model.pt"
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
    start = 1
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            start = restore(model, stopper, Path(directory)) + 1
    last = train["max_epochs"] if model.iterative else 1
    for epoch in range(start, last + 1):
        step = train_step(model, split, evaluator, epoch)
        stopper.update(step[metric], epoch)
        step["stale_epochs"] = stopper.stale
        with tempfile.TemporaryDirectory(prefix="recsearch-ckpt-") as directory:
            save(model, stopper, epoch, step[metric], Path(directory))
            tune.report(step, checkpoint=tune.Checkpoint.from_directory(directory))
        if stopper.should_stop:
            break


def save(model: Recommender, stopper, epoch: int, value: float, directory: Path) -> None:
    torch.save(model.state(), directory / STATE_FILE)
    progress = {"epoch": epoch, "value": value, "best": stopper.best, "best_epoch": stopper.best_epoch,
                "stale": stopper.stale}
    (directory / PROGRESS_FILE).write_text(json.dumps(progress))


def restore(model: Recommender, stopper, directory: Path) -> int:
    """Load a checkpoint into a prepared model and the stopper; returns its epoch."""
    load_weights(model, directory)
    progress = read_progress(directory)
    stopper.best, stopper.best_epoch, stopper.stale = progress["best"], progress["best_epoch"], progress["stale"]
    return int(progress["epoch"])


def load_weights(model: Recommender, directory: Path) -> None:
    model.load_state(torch.load(directory / STATE_FILE, map_location=model.device, weights_only=True))


def read_progress(directory: Path) -> dict[str, Any]:
    return json.loads((directory / PROGRESS_FILE).read_text())
