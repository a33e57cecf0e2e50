"""The Tune trainable: one trial = one model family with one sampled set of hyperparameters.

The trial is ``recsearch.training.train`` with two additions: every epoch is reported to Tune
with a checkpoint (``recsearch.tuning.checkpoint``), so that ASHA can stop the trial between
epochs, and a killed or preempted trial resumes from its last checkpoint. Besides ASHA, the
loop's own early stopping ends the trial after ``train.patience`` epochs without improvement.
Every epoch is also recorded as Ray metrics, tagged with the sweep, family and trial
(``recsearch.telemetry``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from recsearch import telemetry
from recsearch.data.dataset import Split
from recsearch.tuning import checkpoint


def run_trial(config: dict[str, Any], split: Split, setup: dict[str, Any]) -> None:
    """Train one configuration under Tune. ``config``: the sampled hyperparameters; ``split``:
    the shared training data (a Ray object reference resolved here); ``setup``: the family's
    plain-dict settings (see ``recsearch.tuning.plan.trial_setup``) plus the sweep's name and the
    family, which tag the trial's metrics."""
    import ray
    from ray import tune

    from recsearch.evaluation import Evaluator
    from recsearch.models.factory import build_model
    from recsearch.runtime import configure_threads, seed_everything
    from recsearch.training import EpochEnd, train

    # one "Checkpoint successfully created" line per epoch and trial drowns the progress output
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    if isinstance(split, ray.ObjectRef):
        split = ray.get(split)
    configure_threads()  # Ray sets OMP_NUM_THREADS to the trial's CPUs
    seed_everything(setup["seed"])
    task, loop = setup["task"], setup["train"]
    model = build_model(setup["model"], seed=setup["seed"], device=setup["device"], task=task["name"], **config)
    resume = None
    if (saved := tune.get_checkpoint()) is not None:
        with saved.as_directory() as directory:
            resume = checkpoint.read(Path(directory))

    # the leaderboard's trial name (family_id): what Prometheus series and leaderboard rows share
    tags = {"sweep": setup["sweep"], "family": setup["family"], "trial": tune.get_context().get_trial_name()}

    # where the trial runs: the GPUs Ray assigned it (CUDA_VISIBLE_DEVICES holds just those, so
    # device=auto trains on them) and the device it trains on; on every row, for the leaderboard's readers
    placement = {"device": str(model.device), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids())}

    def report(end: EpochEnd) -> None:
        telemetry.record_epoch(end.row, tags)
        with tempfile.TemporaryDirectory(prefix="recsearch-ckpt-") as directory:
            checkpoint.write(Path(directory), end)
            tune.report({**end.row, **placement}, checkpoint=tune.Checkpoint.from_directory(directory))

    train(model, split, Evaluator.for_task(task, batch_size=loop["eval_batch_size"]), task["metric"],
          loop["max_epochs"], loop["patience"], on_epoch=report, resume=resume)
