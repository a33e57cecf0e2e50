"""The Tune trainables: one trial = one model family with one set of hyperparameters.

A trial is ``recsearch.training.train`` with two additions: every epoch is reported to Tune
with a checkpoint (``recsearch.tuning.checkpoint``), so that ASHA can stop the trial between
epochs, and a killed or preempted trial resumes from its last checkpoint. Besides ASHA, the
loop's own early stopping (``train.patience`` and the settings beside it) ends the trial.
The sweep's driver records every reported epoch as Ray metrics (``recsearch.tuning.monitor``).

``run_trial`` is a sweep's trial; ``run_reevaluation`` retrains one of the sweep's best
configurations on another seed (``recsearch.tuning.reevaluation``) and, once trained, also
reports its test metrics, under ``test/<metric>``; ``run_refit`` retrains the chosen one on
train + valid for a set number of epochs, with no validation (``recsearch.tuning.refit``).
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

from recsearch.data.dataset import Split
from recsearch.tuning import checkpoint


def run_trial(config: dict[str, Any], split: Split, setup: dict[str, Any]) -> None:
    """Train one configuration under Tune. ``config``: the sampled hyperparameters; ``split``:
    the shared training data (a Ray object reference resolved here); ``setup``: the family's
    plain-dict settings (see ``recsearch.tuning.plan.trial_setup``)."""
    _train_reporting(config, split, setup, setup["seed"])


def run_reevaluation(config: dict[str, Any], split: Split, setups: dict[str, dict[str, Any]]) -> None:
    """Retrain a sweep trial's configuration (``config["run"]``: ``trial``, ``family``, ``hparams``,
    ``seed``, ``epochs``: a set number, or None for early stopping) with its family's setup on
    that seed, then report its test metrics."""
    point = config["run"]
    _train_reporting(point["hparams"], split, setups[point["family"]], point["seed"], epochs=point.get("epochs"),
                     test=True)


def run_refit(config: dict[str, Any], split: Split, setups: dict[str, dict[str, Any]]) -> None:
    """Retrain the chosen configuration (``config["run"]``: ``trial``, ``family``, ``hparams``,
    ``seed``, ``epochs``) on train + valid for ``epochs`` epochs; its test is the export's."""
    point = config["run"]
    _train_reporting(point["hparams"], split, setups[point["family"]], point["seed"], epochs=point["epochs"],
                     refit=True)


def _train_reporting(hparams: dict[str, Any], split: Split, setup: dict[str, Any], seed: int, *,
                     epochs: int | None = None, refit: bool = False, test: bool = False) -> None:
    """Train under early stopping (``epochs`` None) or for exactly ``epochs`` epochs with no
    validation until the end; ``refit``: on train + valid; ``test``: then report the kept
    epoch's test metrics, and its validation ones when they were not measured on the way."""
    import ray
    from ray import tune

    from recsearch.evaluation import Evaluator
    from recsearch.evaluation.metrics import TEST_PREFIX, valid_key
    from recsearch.models.factory import build_model
    from recsearch.runtime import configure_threads, seed_everything
    from recsearch.training import EpochEnd, Stopping, train

    # one "Checkpoint successfully created" line per epoch and trial drowns the progress output
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    if isinstance(split, ray.ObjectRef):
        split = ray.get(split)
    if refit:
        split = split.train_and_valid()
    # the split's arrays are the object store's read-only shared memory, which models only read:
    # torch's warning that its tensors over them must not be written would greet every trial
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    configure_threads()  # Ray sets OMP_NUM_THREADS to the trial's CPUs
    seed_everything(seed)
    task, loop = setup["task"], setup["train"]
    model = build_model(setup["model"], seed=seed, device=setup["device"], task=task["name"], **hparams)
    resume = None
    if (saved := tune.get_checkpoint()) is not None:
        with saved.as_directory() as directory:
            resume = checkpoint.read(Path(directory))
    last: dict[str, Any] = {}

    # where the trial runs: the GPUs Ray assigned it (CUDA_VISIBLE_DEVICES holds just those, so
    # device=auto trains on them) and the device it trains on; on every row, for the leaderboard's readers
    placement = {"device": str(model.device), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}

    def report(end: EpochEnd) -> None:
        last.update(end.row)
        with tempfile.TemporaryDirectory(prefix="recsearch-ckpt-") as directory:
            checkpoint.write(Path(directory), end)
            tune.report({**end.row, **placement}, checkpoint=tune.Checkpoint.from_directory(directory))

    evaluator = Evaluator.for_task(task, batch_size=loop["eval_batch_size"])
    # a set number of epochs has no stopping rule, and no validation on the way
    max_epochs, stopping = (loop["max_epochs"], Stopping.of(loop)) if epochs is None else (epochs, None)
    result = train(model, split, evaluator, task["metric"], max_epochs, stopping, on_epoch=report, resume=resume)
    if test:  # the best epoch's state is restored: the last epoch's row again, with its test metrics
        row = last or {"epoch": resume.epoch}  # resumed after its last epoch: nothing re-ran, only this merges in
        if epochs is not None:
            row.update({valid_key(name): value for name, value in evaluator.evaluate(model, split, "valid").items()})
        tested = evaluator.evaluate(model, split, "test")
        tune.report({**row, "best_epoch": result.best_epoch,
                     **{f"{TEST_PREFIX}{name}": value for name, value in tested.items()}})
