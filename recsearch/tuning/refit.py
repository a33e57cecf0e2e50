"""The refit (``search.refit``): the sweep's chosen configuration retrained on train + valid
before its test and export.

Once validation has chosen the configuration and its number of epochs, the validation
interactions are more training data, and a model exported for serving should have learnt from
every interaction that is not test (the protocol of Ferrari Dacrema et al. 2019 and of
scikit-learn's ``GridSearchCV(refit=True)``). The refit trains the winner's hyperparameters on
its seed for exactly the epochs it was chosen at (closed-form models: one fit), with no early
stopping: no validation is left (``recsearch.training.train`` without a stopping rule, on
``Split.train_and_valid``). Those epochs are its sweep trial's best epoch or, when its fresh
seeds early-stopped on their own (``search.reevaluate.epochs=early_stopping``), the median of
that epoch and theirs: one seed's best epoch is a noisy guess of how long the configuration
should train.

It runs as one more Tune experiment (``<storage>/refit``), of one trial (one per member of a
chosen blend: ``recsearch.tuning.blending``), like the re-evaluation:
a GPU cluster refits on a GPU worker, and an interrupted sweep resumes it. The trial only trains
and checkpoints; ``selection.export_best`` then tests its model, once, and exports it.
"""

from __future__ import annotations

import statistics
from typing import Any

from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import Trial, experiment_trials

EXPERIMENT = "refit"  # the Tune experiment's name under the sweep's storage


def enabled(plan: SweepPlan) -> bool:
    """``search.refit`` (plans saved before it existed: off)."""
    return bool(plan.first["search"].get("refit"))


def point(plan: SweepPlan, winner: Trial, seeds: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the refit trial trains: the winner's family, hyperparameters and seed, for the median
    of its best epoch and those its fresh seeds kept (``seeds``: its re-evaluation, if any)."""
    epochs = [winner.best(plan.first["task"]["metric"])["epoch"], *(seeds or {}).get("epochs", [])]
    return {"trial": winner.name, "family": winner.family, "hparams": winner.hparams,
            "seed": plan.configs[winner.family]["seed"], "epochs": round(statistics.median(epochs))}


def run(plan: SweepPlan, trials: list[Trial], reevaluated: dict[str, Any] | None, split_ref,
        resume: bool) -> dict[str, Trial]:
    """Run (or continue) the refit of ``trials`` (the winner, or a blend's members); returns
    ``trained``."""
    from recsearch.tuning.reevaluation import for_trial
    from recsearch.tuning.sweep import run_points
    from recsearch.tuning.trainable import run_refit

    points = [point(plan, trial, for_trial(reevaluated, trial.name)) for trial in trials]
    run_points(plan, EXPERIMENT, run_refit, points, _trial_name, split_ref, resume, "refit",
               "; ".join(f"{p['trial']} on train + valid for {p['epochs']} epoch(s)" for p in points))
    return trained(plan)


def trained(plan: SweepPlan) -> dict[str, Trial]:
    """The refit trials started so far, by the name of the sweep trial each refits."""
    return {trial.hparams["run"]["trial"]: trial for trial in experiment_trials(plan, EXPERIMENT)}


def _trial_name(trial) -> str:
    return f"{trial.config['run']['trial']}_refit"
