"""Multi-seed re-evaluation: a sweep's winner on one seed is partly luck, so the top
``search.reevaluate.top`` configurations are retrained on ``search.reevaluate.seeds`` fresh
seeds (``seed + 1``, ``seed + 2``, ...) and the best is chosen by its mean validation metric.

The retraining runs as one more Tune experiment (``<storage>/reevaluate``): a grid of
(configuration x seed) points, each a real trial with no scheduler, so it runs on the cluster,
checkpoints and resumes like any other. Fresh seeds keep the sweep's selection out of the
estimate: the seed a configuration won on would flatter it. Closed-form fits do not depend on
the seed: they are refitted once.

How long a fresh seed trains (``search.reevaluate.epochs``):

* ``chosen`` (the default): exactly the epochs its sweep trial was chosen at (its best epoch),
  validated once, at the end. What is measured is then the recipe that is exported (these
  hyperparameters for this many epochs), not each seed's own luckiest epoch, and nothing is
  spent on per-epoch validation or on the patience epochs after a peak.
* ``early_stopping``: the loop's own early stopping, validated every epoch; each seed keeps its
  best epoch, which flatters every configuration a little, and costs the patience epochs.

Each re-evaluation trial also evaluates its kept epoch on the test split, so that the report can
show the test metric's mean and interval beside the validation one. Those test figures are
reported, never used: the choice is made on validation means alone, and only the chosen
configuration's model is exported.
"""

from __future__ import annotations

from typing import Any

from recsearch.evaluation.metrics import metric_mode, reported_test, valid_key, valid_metrics
from recsearch.stats import summarize
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import Trial, experiment_trials

EXPERIMENT = "reevaluate"  # the Tune experiment's name under the sweep's storage


def settings(plan: SweepPlan) -> dict[str, Any] | None:
    """``search.reevaluate`` when it is on (plans saved before it existed: off)."""
    chosen = plan.first["search"].get("reevaluate")
    return chosen if chosen and chosen["enabled"] else None


def grid(plan: SweepPlan, board: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (configuration x seed) points: the sweep's ``top`` ranked trials, each on ``seeds``
    fresh seeds (closed-form ones on one); ``epochs``: the trial's best epoch, which fresh seeds
    train for (``search.reevaluate.epochs=chosen``), or None (their own early stopping)."""
    chosen = settings(plan)
    if chosen is None:
        return []
    seed = plan.first["seed"]
    points = []
    for row in [r for r in board if r["rank"] is not None][: chosen["top"]]:
        n_seeds = chosen["seeds"] if plan.configs[row["family"]]["iterative"] else 1
        epochs = row["best_epoch"] if chosen.get("epochs", "early_stopping") == "chosen" else None
        points += [{"trial": row["trial"], "family": row["family"], "hparams": row["hparams"], "seed": seed + s,
                    "epochs": epochs} for s in range(1, n_seeds + 1)]
    return points


def run(plan: SweepPlan, points: list[dict[str, Any]], split_ref, resume: bool) -> list[Trial]:
    """Run (or continue) the re-evaluation trials; returns them as read back from the storage."""
    from recsearch.tuning.sweep import run_points
    from recsearch.tuning.trainable import run_reevaluation

    chosen = settings(plan)
    run_points(plan, EXPERIMENT, run_reevaluation, points, _trial_name, split_ref, resume, "re-evaluation",
               f"the top {chosen['top']} configurations on {chosen['seeds']} fresh seeds ({len(points)} trials, "
               f"{'each for its chosen epochs' if chosen.get('epochs') == 'chosen' else 'under early stopping'})")
    return experiment_trials(plan, EXPERIMENT)


def _trial_name(trial) -> str:
    point = trial.config["run"]
    return f"{point['trial']}_seed{point['seed']}"


def outcome(plan: SweepPlan, board: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The re-evaluation as the summary records it (None when it is off): per configuration the
    mean, standard deviation and 95% interval of every validation and test metric over its
    seeds, and the one chosen by mean validation. Works on a finished or a partial run."""
    chosen = settings(plan)
    if chosen is None:
        return None
    metric = plan.first["task"]["metric"]
    trials = experiment_trials(plan, EXPERIMENT)
    points = grid(plan, board)
    candidates = []
    for row in (r for r in board if r["trial"] in {p["trial"] for p in points}):
        runs = [t for t in trials if t.hparams["run"]["trial"] == row["trial"]]
        valid, test, epochs = [], [], []
        for trial in runs:
            tested = next((r for r in trial.history if reported_test(r)), None)
            if trial.status == "TERMINATED" and tested is not None:
                kept = trial.best(metric)
                valid.append(valid_metrics(kept))
                test.append(reported_test(tested))
                epochs.append(kept["epoch"])
        candidates.append({"trial": row["trial"], "family": row["family"], "sweep_rank": row["rank"],
                           "hparams": row["hparams"], "seeds": [p["seed"] for p in points if p["trial"] == row["trial"]],
                           "runs": len(valid), "valid": summarize(valid), "test": summarize(test), "epochs": epochs,
                           "errors": [t.error for t in runs if t.error]})
    best = best_candidate(candidates, metric)
    return {"top": chosen["top"], "seeds": chosen["seeds"],
            "selected_by": f"mean {valid_key(metric)} ({metric_mode(metric)}) over fresh seeds",
            "candidates": candidates, "chosen": best["trial"] if best else None,
            "trials_left": len(points) - sum(t.status in ("TERMINATED", "ERROR") for t in trials)}


def best_candidate(candidates: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The candidate with the best mean validation ``metric`` over its finished runs (None when
    none has one)."""
    done = [c for c in candidates if c["runs"]]
    pick = max if metric_mode(metric) == "max" else min
    return pick(done, key=lambda c: c["valid"][metric]["mean"]) if done else None


def for_trial(reevaluation: dict[str, Any] | None, trial: str) -> dict[str, Any] | None:
    """The re-evaluated configuration of sweep trial ``trial``, when it was one."""
    return next((c for c in (reevaluation or {}).get("candidates", []) if c["trial"] == trial), None)
