"""``recsearch sweep`` and ``recsearch resume``: one Ray Tune experiment per model family; all
trials are then ranked together (``recsearch.tuning.selection``).

Order of work, so that bad input costs nothing: compose and check every family's config and
the output folder, then load and split the data, and only then start (or join) Ray. The split
goes into the object store once; every trial of every family reads that one copy.
"""

from __future__ import annotations

import math
import os
import shlex
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from recsearch.data.dataset import Split
from recsearch.errors import ConfigError, RecsearchError
from recsearch.evaluation.metrics import metric_mode, valid_key
from recsearch.output import check_writable
from recsearch.tuning import blending, reevaluation, refit
from recsearch.tuning.leaderboard import leaderboard
from recsearch.tuning.plan import PLAN_FILE, SweepPlan, plan_sweep, trial_setup
from recsearch.tuning.results import collect_trials
from recsearch.tuning.selection import Phases, finish, rank, selection
from recsearch.tuning.space import default_point

# set by Ray in the environment of a job's driver (the entrypoint of `ray job submit`, `recsearch submit`)
SUBMITTED_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


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
    check_writable(out)
    phases = Phases()
    with phases("load_data"):
        if split is None:
            split = load_sweep_split(plan.first)
    plan.save()  # only once the data loaded: a bad data file leaves no half-made sweep behind
    print(f"sweep {plan.name}: {', '.join(plan.families)} on {plan.first['data']['name']} "
          f"({plan.first['task']['name']}, {selection(plan.first)}) -> {out}", flush=True)
    try:
        with ExitStack() as ray_up:
            with phases("ray_start"):
                ray_up.enter_context(ray_session(plan.first["ray"], plan))
            import ray

            advice = unused_gpus(ray.cluster_resources().get("GPU", 0), plan.first["ray"]["gpus_per_trial"],
                                 plan.first["device"])
            if advice:
                print(advice, flush=True)
            with phases("put_data"):
                split_ref = ray.put(split)
            for family in plan.families:
                with phases(f"trials/{family}"):
                    _fit_family(plan, family, split_ref, resume)
            with phases("reevaluation"):
                _reevaluate(plan, split_ref, resume)
            with phases("blend"):
                _blend(plan, split, resume)
            with phases("refit"):
                _refit(plan, split_ref, resume)
            with phases("ray_stop"):
                ray_up.close()
    except KeyboardInterrupt:
        raise SweepInterrupted(f"interrupted; continue with `recsearch resume {out}`") from None
    return finish(plan, split, phases)


def unused_gpus(cluster_gpus: float, gpus_per_trial: float, device: str) -> str | None:
    """A warning when the cluster has GPUs that no trial will get (Ray hides a GPU from a task
    that did not ask for one, so device=auto then trains on the CPU)."""
    if cluster_gpus and not gpus_per_trial and device != "cpu":
        return (f"warning: the cluster has {cluster_gpus:g} GPU(s) but ray.gpus_per_trial=0, so every trial "
                "trains on a CPU; set ray.gpus_per_trial (1, or 0.25 for four trials per GPU) to use them, or "
                "device=cpu to silence this")
    return None


@contextmanager
def ray_session(ray_cfg: dict[str, Any], plan: SweepPlan | None = None):
    """Join the configured cluster (``ray.address`` or ``$RAY_ADDRESS``) or start a fresh
    local Ray, and shut it down afterwards; an already initialised Ray is used as it is. With
    ``plan``, the driver's Ray job carries the sweep's metadata (``job_metadata``)."""
    import ray
    from ray.job_config import JobConfig

    if ray.is_initialized():
        yield
        return
    job_config = JobConfig(metadata=job_metadata(plan) if plan else None)
    address = ray_cfg["address"] or os.environ.get("RAY_ADDRESS")
    if address:
        context = ray.init(address=address, job_config=job_config)
        if plan is not None and SUBMITTED_JOB_ENV not in os.environ:
            print(_driver_note(plan, context.dashboard_url), flush=True)
    else:  # "local" never joins a cluster that a stale ray_current_cluster file points at
        context = ray.init(address="local", num_cpus=ray_cfg["num_cpus"], num_gpus=ray_cfg["num_gpus"],
                           object_store_memory=ray_cfg["object_store_memory"], job_config=job_config,
                           include_dashboard=ray_cfg["include_dashboard"], dashboard_host="127.0.0.1")
        if context.dashboard_url:
            print(f"Ray dashboard: http://{context.dashboard_url} (it closes when this sweep ends; for one that "
                  "stays, start Ray with `ray start --head` and run the sweep with `recsearch submit`)", flush=True)
    try:
        yield
    finally:
        ray.shutdown()


def job_metadata(plan: SweepPlan) -> dict[str, str]:
    """What the dashboard's Jobs page shows of a sweep's job, submitted or not."""
    return {"recsearch_sweep": plan.name, "recsearch_families": ",".join(plan.families), "recsearch_out": plan.out}


def _driver_note(plan: SweepPlan, dashboard: str) -> str:
    """A sweep that joins a running cluster keeps its driver in this process (see the README,
    "Running on a cluster"): say how to run it as a job instead, whose log the dashboard shows."""
    address = f"http://{dashboard}" if dashboard else "http://HEAD:8265"
    overrides = [o for o in plan.overrides if o.split("=", 1)[0] != "ray.address"]  # a job is on the cluster
    return ("note: this sweep's driver runs in this process: its log stays in this terminal, and the "
            "dashboard's Jobs page lists it without one. For the log in the dashboard and a sweep that "
            "outlives this terminal, run it as a Ray Job:\n"
            f"  recsearch submit --address {address} {shlex.join(overrides)}")


def _fit_family(plan: SweepPlan, family: str, split_ref, resume: bool) -> None:
    from ray import tune

    from recsearch.tuning.monitor import SweepMonitor
    from recsearch.tuning.trainable import run_trial

    config = plan.configs[family]
    ray_cfg = config["ray"]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, split=split_ref,
                             setup=trial_setup(plan, family)),
        {"cpu": ray_cfg["cpus_per_trial"], "gpu": ray_cfg["gpus_per_trial"]},
    )
    trainable._progress_metrics = progress_metrics(config["task"]["metric"])
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
                           tune_config=_tune_config(plan, family),
                           # the sweep's metrics for Prometheus
                           run_config=run_config(plan, family, ray_cfg, SweepMonitor(plan.name, family, config)))
    tuner.fit()
    # Tune returns normally on Ctrl-C: what it saved tells whether every trial ran
    trials = collect_trials(plan, [family])
    grid_points = math.prod(len(s.args) for s in plan.space(family).values() if s.kind == "grid")
    left = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)
    left += max(0, config["search"]["num_samples"] * grid_points - len(trials))
    if left:
        raise SweepInterrupted(f"{family}: {left} trials left to run; continue with `recsearch resume {plan.out}`")


def _reevaluate(plan: SweepPlan, split_ref, resume: bool) -> None:
    """Retrain the best configurations on fresh seeds (``recsearch.tuning.reevaluation``)."""
    board = leaderboard(plan, collect_trials(plan))
    points = reevaluation.grid(plan, board)
    if not points:
        return
    reevaluation.run(plan, points, split_ref, resume)
    left = reevaluation.outcome(plan, board)["trials_left"]
    if left:
        raise SweepInterrupted(f"re-evaluation: {left} trials left to run; continue with "
                               f"`recsearch resume {plan.out}`")


def run_points(plan: SweepPlan, experiment: str, trainable_fn, points: list[dict[str, Any]], trial_name,
               split_ref, resume: bool, title: str, what: str) -> None:
    """Run (or continue) one more Tune experiment after the families' (``<storage>/<experiment>``):
    the re-evaluation, the refit. A grid of ``points`` (each a trial's ``config["run"]``), trained
    by ``trainable_fn(config, split, setups)`` with every family's setup and named by
    ``trial_name(trial)``; real trials on the cluster that checkpoint and resume like the sweep's."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    from recsearch.tuning.monitor import TrialMetrics

    ray_cfg = plan.first["ray"]
    setups = {family: trial_setup(plan, family) for family in plan.configs}
    trainable = tune.with_resources(tune.with_parameters(trainable_fn, split=split_ref, setups=setups),
                                    {"cpu": ray_cfg["cpus_per_trial"], "gpu": ray_cfg["gpus_per_trial"]})
    trainable._progress_metrics = progress_metrics(plan.first["task"]["metric"])
    path = plan.experiment_path(experiment)
    if resume and tune.Tuner.can_restore(path):
        print(f"\n== {title}: resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        print(f"\n== {title}: {what}", flush=True)
        # no metric: nothing here ranks or stops trials, and some report none (a trial resumed after
        # its last epoch reports only its test metrics; a refit has no validation)
        tune_config = tune.TuneConfig(scheduler=FIFOScheduler(), reuse_actors=True,
                                      max_concurrent_trials=ray_cfg["max_concurrent_trials"],
                                      trial_name_creator=trial_name, trial_dirname_creator=trial_name)
        tuner = tune.Tuner(trainable, param_space={"run": tune.grid_search(points)}, tune_config=tune_config,
                           run_config=run_config(plan, experiment, ray_cfg, TrialMetrics(plan.name)))
    tuner.fit()


def _blend(plan: SweepPlan, split: Split, resume: bool) -> None:
    """With ``search.blend``, search the blend of the families' winners on validation
    (``recsearch.tuning.blending``); a resumed sweep keeps the blend it chose."""
    if not blending.settings(plan) or (resume and blending.recorded(plan) is not None):
        return
    trials, board, reevaluated, _ = rank(plan)
    blending.choose(plan, split, board, {t.name: t for t in trials}, reevaluated)


def _refit(plan: SweepPlan, split_ref, resume: bool) -> None:
    """With ``search.refit``, retrain the winner's configuration, or the chosen blend's members,
    on train + valid (``recsearch.tuning.refit``); the export then tests those models."""
    if not refit.enabled(plan):
        return
    trials, _, reevaluated, winner = rank(plan)
    if winner is None:  # no trial finished: ``finish`` says why
        return
    blend = blending.chosen(plan)
    by_name = {t.name: t for t in trials}
    targets = [by_name[m["trial"]] for m in blend["members"]] if blend else [winner]
    refitted = refit.run(plan, targets, reevaluated, split_ref, resume)
    if any(refitted.get(t.name) is None or refitted[t.name].status not in ("TERMINATED", "ERROR") for t in targets):
        raise SweepInterrupted(f"refit: unfinished; continue with `recsearch resume {plan.out}`")
    # a failed refit loses nothing: ``finish`` exports the models as trained on train, then fails


def progress_metrics(metric: str) -> list[str]:
    """What Tune's progress output shows of each result (instead of every metric at every cutoff)."""
    return ["epoch", "loss", valid_key(metric)]


def _param_space(plan: SweepPlan, family: str) -> dict[str, Any]:
    from recsearch.tuning.space import tune_space

    return tune_space(plan.space(family))


def _tune_config(plan: SweepPlan, family: str):
    import warnings

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    config = plan.configs[family]
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
        from recsearch.models.factory import build_model

        model = build_model(config["model"], task=task["name"], device="cpu")
        start = default_point(plan.space(family), model.hparams)
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
    return tune.TuneConfig(metric=valid_key(task["metric"]), mode=metric_mode(task["metric"]),
                           num_samples=search["num_samples"],
                           scheduler=scheduler, search_alg=searcher, max_concurrent_trials=limit,
                           reuse_actors=True,  # a new trial skips the worker start-up (imports, torch)
                           trial_name_creator=partial(_trial_name, family),
                           trial_dirname_creator=partial(_trial_name, family))


def run_config(plan: SweepPlan, name: str, ray_cfg: dict[str, Any], *callbacks):
    """Tune's run settings of the sweep's experiment ``name`` (a family, the re-evaluation, the refit),
    with Tune ``callbacks`` besides TensorBoard's."""
    from ray import tune
    from ray.tune.logger import TBXLoggerCallback

    return tune.RunConfig(
        name=name,
        storage_path=plan.storage,
        failure_config=tune.FailureConfig(max_failures=ray_cfg["max_failures"]),
        # The newest checkpoints only: each carries the best epoch's state too. Tune snapshots its
        # experiment state every num_to_keep checkpoints, assuming newest-first retention; a
        # best-first policy deleted the checkpoint that snapshot named as the latest up to a
        # second before the next one, and a driver killed then left a state pointing at nothing.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[TBXLoggerCallback(), *callbacks],  # TensorBoard: tensorboard --logdir <storage>
        verbose=ray_cfg["verbose"],
    )


def _trial_name(family: str, trial) -> str:
    return f"{family}_{trial.trial_id}"


def load_sweep_split(config: dict[str, Any]) -> Split:
    """The split every trial of the sweep shares, as ``recsearch train`` would make it."""
    from recsearch.data import load_split

    return load_split(config["data"], config["seed"], config["task"]["implicit_threshold"])
