"""``recsearch sweep`` and ``recsearch resume``: one Ray Tune experiment per model family, all
trials ranked together on the validation metric, the winner evaluated once on the test split
and exported as a servable model directory.

Order of work, so that bad input costs nothing: compose and check every family's config, then
load and split the data, and only then start (or join) Ray. The split goes into the object
store once; every trial of every family reads that one copy.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import Counter
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from recsearch.data.dataset import Split
from recsearch.errors import ConfigError, RecsearchError
from recsearch.output import write_json
from recsearch.tuning.plan import PLAN_FILE, SweepPlan, plan_sweep, trial_setup
from recsearch.tuning.results import Trial, collect_trials, latest_checkpoint
from recsearch.tuning.space import default_point, parse_space

SUMMARY_FILE = "summary.json"


class SweepFailed(RecsearchError):
    """No trial of the sweep produced a validation metric."""


class SweepInterrupted(RecsearchError):
    """The sweep stopped before its trials finished (Ctrl-C); it can be resumed."""


def sweep_command(overrides: list[str]) -> dict[str, Any]:
    plan = plan_sweep(overrides)
    resume = bool(plan.first["ray"]["resume"])
    if resume and (Path(plan.out) / PLAN_FILE).is_file():
        plan = SweepPlan.load(plan.out)  # resuming continues the saved sweep, whatever else was passed
    return run_sweep(plan, resume=resume)


def resume_command(directory: str) -> dict[str, Any]:
    """Continue the sweep in ``directory``: finished trials stay as they are, unfinished ones go
    on from their last checkpoint. Tune restores its state with pickle: resume only sweeps
    you trust."""
    return run_sweep(SweepPlan.load(directory), resume=True)


def run_sweep(plan: SweepPlan, resume: bool = False, split: Split | None = None) -> dict[str, Any]:
    """Run (or continue) the plan's sweep and write its results; returns the summary. ``split``
    replaces loading the data from the config (library use and tests)."""
    out = Path(plan.out)
    if (out / PLAN_FILE).is_file() and not resume:
        raise ConfigError(f"{out} already holds a sweep: continue it with `recsearch resume {out}` or choose another out=")
    started = time.time()
    if split is None:
        split = load_sweep_split(plan.first)
    plan.save()  # only once the data loaded: a bad data file leaves no half-made sweep behind
    print(f"sweep {plan.name}: {', '.join(plan.families)} on {plan.first['data']['name']} "
          f"({plan.first['task']['name']}, {_selection(plan.first)}) -> {out}", flush=True)
    try:
        with ray_session(plan.first["ray"]):
            import ray

            split_ref = ray.put(split)
            for family in plan.families:
                _fit_family(plan, family, split_ref, resume)
    except KeyboardInterrupt:
        raise SweepInterrupted(f"interrupted; continue with `recsearch resume {out}`") from None
    return finish(plan, split, time.time() - started)


def finish(plan: SweepPlan, split: Split, wall_seconds: float) -> dict[str, Any]:
    """Rank the trials, test the winner once, export it, write the summary and the report."""
    from recsearch.tuning.report import (
        leaderboard,
        print_leaderboard,
        write_leaderboard,
        write_report,
    )

    out = Path(plan.out)
    task = plan.first["task"]
    trials = collect_trials(plan)
    board = leaderboard(plan, trials)
    summary = {
        "sweep": plan.name,
        "directory": str(out),
        "families": plan.families,
        "data": plan.first["data"]["name"],
        "task": task["name"],
        "metric": f"valid/{task['metric']}",
        "mode": task["mode"],
        "wall_seconds": round(wall_seconds, 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": _counts(board),
        "trials_per_family": {f: _counts([r for r in board if r["family"] == f]) for f in plan.families},
        "errors": [{"trial": r["trial"], "error": r["error"]} for r in board if r["error"]],
        "best": None,
    }
    write_leaderboard(board, task["metric"], out / "leaderboard.csv")
    ranked = [row for row in board if row["rank"] is not None]
    if ranked:
        winner = next(t for t in trials if t.name == ranked[0]["trial"])
        summary["best"] = export_best(plan, winner, split)
    write_json(out / SUMMARY_FILE, summary)
    write_report(plan, trials, board, summary, out / "report.html")
    print_leaderboard(board, task)
    if not ranked:
        reasons = Counter(row["error"] or f"status {row['status']}" for row in board)
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
        raise SweepFailed(f"all {len(board)} trials failed: {why or 'no trial ran'}. Details: {out / SUMMARY_FILE}")
    best = summary["best"]
    print(f"\nbest: {best['trial']} ({best['family']}) {_fmt(best['hparams'])}\n"
          f"  valid {task['metric']} {best['valid'][task['metric']]:.4f} at epoch {best['epoch']}, "
          f"test {task['metric']} {best['test'][task['metric']]:.4f}\n"
          f"trials: {_fmt(summary['trials'])}; {summary['wall_seconds']:.0f}s\n"
          f"wrote {out}/leaderboard.csv, summary.json, report.html and best/\n"
          f"TensorBoard: tensorboard --logdir {plan.storage}", flush=True)
    return summary


def export_best(plan: SweepPlan, trial: Trial, split: Split) -> dict[str, Any]:
    """Rebuild the winner from its best epoch's state, evaluate it on the test split (the only
    time the sweep touches it) and save it as ``best/``."""
    from recsearch.evaluation import Evaluator
    from recsearch.tuning.trainable import best_state_file, build_model, load_weights, read_progress

    config = plan.configs[trial.family]
    task = config["task"]
    model = build_model(trial_setup(config), trial.hparams)
    model.prepare(split.train)
    with latest_checkpoint(trial) as directory:
        if directory is None:
            raise SweepFailed(f"trial {trial.name} has no checkpoint left in {trial.path}")
        load_weights(model, best_state_file(directory))
        epoch = read_progress(directory)["best_epoch"]
    row = next(r for r in trial.history if r["epoch"] == epoch)  # the exported epoch's own metrics
    test = Evaluator.for_task(task, batch_size=config["train"]["eval_batch_size"]).evaluate(model, split, "test")
    valid = {k.removeprefix("valid/"): v for k, v in row.items() if k.startswith("valid/")}
    best = {
        "trial": trial.name,
        "family": trial.family,
        "hparams": trial.hparams,
        "model": {**config["model"], **trial.hparams},
        "epoch": epoch,
        "valid": valid,
        "test": test,
        "model_dir": "best",
    }
    target = Path(plan.out) / "best"
    shutil.rmtree(target, ignore_errors=True)
    model.save(target, metadata={"sweep": plan.name, "trial": trial.name, "data": config["data"]["name"],
                                 "selected_by": _selection(config), "epoch": epoch, "valid": valid, "test": test,
                                 "selected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return best


@contextmanager
def ray_session(ray_cfg: dict[str, Any]):
    """Join the configured cluster (``ray.address`` or ``$RAY_ADDRESS``) or start a fresh
    local Ray, and shut it down afterwards; an already initialised Ray is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:  # "local" never joins a cluster that a stale ray_current_cluster file points at
        ray.init(address="local", num_cpus=ray_cfg["num_cpus"], num_gpus=ray_cfg["num_gpus"],
                 object_store_memory=ray_cfg["object_store_memory"],
                 include_dashboard=ray_cfg["include_dashboard"], dashboard_host="127.0.0.1")
    try:
        yield
    finally:
        ray.shutdown()


def _fit_family(plan: SweepPlan, family: str, split_ref, resume: bool) -> None:
    from ray import tune

    from recsearch.tuning.trainable import run_trial

    config = plan.configs[family]
    ray_cfg = config["ray"]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, split=split_ref, setup=trial_setup(config)),
        {"cpu": ray_cfg["cpus_per_trial"], "gpu": ray_cfg["gpus_per_trial"]},
    )
    # what Tune's progress output shows of each result (instead of every metric at every cutoff)
    trainable._progress_metrics = ["epoch", "loss", f"valid/{config['task']['metric']}"]
    # Save Tune's experiment state every second (default: at most every 10 s), so that a killed
    # driver does not re-run finished trials or point at checkpoints already deleted.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # num_to_keep forces a state snapshot every num_to_keep checkpoints: intended, not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    path = plan.experiment_path(family)
    if resume and tune.Tuner.can_restore(path):
        print(f"\n== {family}: resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        print(f"\n== {family}: {config['search']['num_samples']} samples, {config['search']['algorithm']} search, "
              f"{config['scheduler']['name']} scheduler", flush=True)
        tuner = tune.Tuner(trainable, param_space=_param_space(plan, family),
                           tune_config=_tune_config(config, family), run_config=_run_config(plan, family))
    tuner.fit()
    # Tune returns normally on Ctrl-C: what it saved tells whether every trial ran
    trials = collect_trials(plan, [family])
    grid_points = math.prod(len(s.args) for s in plan.space(family).values() if s.kind == "grid")
    left = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)
    left += max(0, config["search"]["num_samples"] * grid_points - len(trials))
    if left:
        raise SweepInterrupted(f"{family}: {left} trials left to run; continue with `recsearch resume {plan.out}`")


def _param_space(plan: SweepPlan, family: str) -> dict[str, Any]:
    from recsearch.tuning.space import tune_space

    return tune_space(plan.space(family))


def _tune_config(config: dict[str, Any], family: str):
    import warnings

    from hydra.utils import instantiate
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    search, scheduler_cfg, task = config["search"], config["scheduler"], config["task"]
    concurrency = config["ray"]["max_concurrent_trials"]
    if scheduler_cfg["name"] == "asha":
        scheduler = ASHAScheduler(time_attr="epoch", max_t=scheduler_cfg["max_t"],
                                  grace_period=scheduler_cfg["grace_period"],
                                  reduction_factor=scheduler_cfg["reduction_factor"])
    else:
        scheduler = FIFOScheduler()
    # the configured defaults first: a sweep then never ranks below the config it started from;
    # read from a model built on that config, so that values chosen by the model (MF's l2: null) count
    start = {}
    if search.get("start_from_defaults"):  # absent from plans saved before it existed
        model = instantiate(config["model"], task=task["name"], device="cpu", _convert_="all")
        start = default_point(parse_space(search["space"]), model.hparams)
    points = [start] if start else None
    if search["algorithm"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        # lists as categorical values (NCF's layer widths) work in memory; Optuna only warns
        warnings.filterwarnings("ignore", message="Choices for a categorical distribution")
        searcher, limit = OptunaSearch(seed=config["seed"], points_to_evaluate=points), concurrency
    else:
        searcher = BasicVariantGenerator(max_concurrent=concurrency or 0, random_state=config["seed"],
                                         points_to_evaluate=points)
        limit = None
    return tune.TuneConfig(metric=f"valid/{task['metric']}", mode=task["mode"], num_samples=search["num_samples"],
                           scheduler=scheduler, search_alg=searcher, max_concurrent_trials=limit,
                           reuse_actors=True,  # a new trial skips the worker start-up (imports, torch)
                           trial_name_creator=partial(_trial_name, family),
                           trial_dirname_creator=partial(_trial_name, family))


def _run_config(plan: SweepPlan, family: str):
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback

    config = plan.configs[family]
    return tune.RunConfig(
        name=family,
        storage_path=plan.storage,
        failure_config=tune.FailureConfig(max_failures=config["ray"]["max_failures"]),
        # The newest checkpoints only: each carries the best epoch's state too. Tune snapshots its
        # experiment state every num_to_keep checkpoints, assuming newest-first retention; a
        # best-first policy deleted the checkpoint that snapshot named as the latest up to a
        # second before the next one, and a driver killed then left a state pointing at nothing.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[TBXLoggerCallback()],  # TensorBoard: tensorboard --logdir <storage>
        verbose=config["ray"]["verbose"],
    )


def _trial_name(family: str, trial) -> str:
    return f"{family}_{trial.trial_id}"


def load_sweep_split(config: dict[str, Any]) -> Split:
    """The split every trial of the sweep shares, as ``recsearch train`` would make it."""
    from recsearch.data import load_split

    task = config["task"]
    threshold = task.get("implicit_threshold") if task["name"] == "ranking" else None
    return load_split(config["data"], seed=config["seed"], implicit_threshold=threshold)


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    stopped = Counter(row["stopped"] for row in rows)
    return {"run": len(rows), "completed": sum(row["rank"] is not None for row in rows),
            "stopped_by_asha": stopped["asha"], "stopped_by_patience": stopped["patience"],
            "errored": stopped["error"], "unfinished": stopped["unfinished"]}


def _selection(config: dict[str, Any]) -> str:
    task = config["task"]
    return f"valid/{task['metric']} ({task['mode']})"


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
