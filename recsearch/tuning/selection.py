"""After the trials: rank them on the validation metric, choose the winner (by its mean over
fresh seeds when the best configurations were re-evaluated), evaluate it (or, with
``search.refit``, its refit on train + valid) on the test split, export it as ``best/`` and
write ``summary.json`` with the sweep's outputs."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recsearch.data.dataset import Split
from recsearch.errors import RecsearchError
from recsearch.evaluation.metrics import metric_mode, valid_key, valid_metrics
from recsearch.output import write_json
from recsearch.stats import plus_minus
from recsearch.tuning import blending, checkpoint, reevaluation, refit
from recsearch.tuning.leaderboard import add_reevaluation, leaderboard
from recsearch.tuning.outputs import SUMMARY_FILE, write_outputs
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import Trial, collect_trials


class SweepFailed(RecsearchError):
    """No trial of the sweep produced a validation metric."""


class Phases:
    """Wall seconds per named phase of a sweep, in the order they ran: where its time went
    (``summary.json``'s ``seconds``; a resumed sweep counts its own run only)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def total(self) -> float:
        return sum(self.seconds.values())


def rank(plan: SweepPlan) -> tuple[list[Trial], list[dict[str, Any]], dict[str, Any] | None, Trial | None]:
    """The trials, their leaderboard, the re-evaluation's outcome and the winner (None when no
    trial finished): the best by mean over fresh seeds when re-evaluated, else the best ranked."""
    trials = collect_trials(plan)
    board = leaderboard(plan, trials)
    reevaluated = reevaluation.outcome(plan, board)
    add_reevaluation(board, reevaluated, plan.first["task"]["metric"])
    ranked = [row["trial"] for row in board if row["rank"] is not None]
    chosen = (reevaluated or {}).get("chosen") or next(iter(ranked), None)
    return trials, board, reevaluated, next((t for t in trials if t.name == chosen), None)


def finish(plan: SweepPlan, split: Split, phases: Phases) -> dict[str, Any]:
    """Rank the trials, choose and test the winner, export it, write the summary and the report."""
    out = Path(plan.out)
    metric = plan.first["task"]["metric"]
    with phases("rank"):
        trials, board, reevaluated, winner = rank(plan)
    summary = {
        "sweep": plan.name,
        "directory": str(out),
        "families": plan.families,
        "data": plan.first["data"]["name"],
        "task": plan.first["task"]["name"],
        "metric": valid_key(metric),
        "mode": metric_mode(metric),
        "wall_seconds": None,  # below, once the winner is exported
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "trials": _counts(board),
        "trials_per_family": {f: _counts([r for r in board if r["family"] == f]) for f in plan.families},
        "errors": [{"trial": r["trial"], "error": r["error"]} for r in board if r["error"]],
        "reevaluation": reevaluated,
        "best": None,
    }
    if blending.settings(plan):
        summary["blend"] = blending.recorded(plan)
    blend = blending.chosen(plan)
    refits = refit.trained(plan) if refit.enabled(plan) and winner is not None else {}
    failed = next((t for t in refits.values() if t.status == "ERROR"), None)
    if failed is not None:
        summary["refit_error"] = {"trial": failed.name, "error": failed.error, "path": failed.path}
        refits = {}  # the models as trained on train are exported instead
    if winner is not None:
        with phases("test_and_export"):
            summary["best"] = (blending.export(plan, blend, split, {t.name: t for t in trials}, refits) if blend else
                               export_best(plan, winner, split, reevaluation.for_trial(reevaluated, winner.name),
                                           refits.get(winner.name)))
    summary["wall_seconds"] = round(phases.total(), 1)  # the report's writing, not yet timed, is not in it
    summary["seconds"] = {name: round(value, 2) for name, value in phases.seconds.items()}
    write_json(out / SUMMARY_FILE, summary)
    write_outputs(plan, trials, board, summary)
    if winner is None:
        reasons = Counter(row["error"] or f"status {row['status']}" for row in board)
        why = "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common())
        raise SweepFailed(f"all {len(board)} trials failed: {why or 'no trial ran'}. Details: {out / SUMMARY_FILE}")
    print(_outcome(summary, metric, plan.storage), flush=True)
    if "refit_error" in summary:
        raise SweepFailed(f"the refit of {summary['refit_error']['trial']} on train + valid failed: "
                          f"{summary['refit_error']['error']}; best/ holds the {'blend' if blend else 'winner'} as "
                          f"trained on train alone. Details: {summary['refit_error']['path']}")
    return summary


def _outcome(summary: dict[str, Any], metric: str, storage: str) -> str:
    """What the sweep prints at its end: the model it chose, its figures, where it wrote them."""
    best = summary["best"]
    seeds, refitted = best.get("seeds"), best.get("refit")
    if best["family"] == "blend":
        lines = [f"best: blend {best['blend']}", f"  valid {metric} {best['valid'][metric]:.4f}"]
    else:
        lines = [f"best: {best['trial']} ({best['family']}) {_fmt(best['hparams'])}",
                 f"  valid {metric} {best['valid'][metric]:.4f} at epoch {best['epoch']}"]
    lines[-1] += f", test {metric} {best['test'][metric]:.4f}"
    if refitted:
        lines[-1] += f" (refitted on {refitted['on']}" + (f" for {refitted['epochs']} epoch(s))" if refitted["epochs"] else ")")
    if seeds:
        lines.append(f"  over {seeds['runs']} fresh seed(s){', trained on train' if refitted else ''}: "
                     f"valid {plus_minus(seeds['valid'].get(metric))}, test {plus_minus(seeds['test'].get(metric))} "
                     "(mean ± 95% CI where there are several)")
    lines += [f"trials: {_fmt(summary['trials'])}; {summary['wall_seconds']:.0f}s",
              f"wrote {summary['directory']}/leaderboard.csv, summary.json, report.html and best/",
              f"TensorBoard: tensorboard --logdir {storage}"]
    return "\n" + "\n".join(lines)


def export_best(plan: SweepPlan, trial: Trial, split: Split, seeds: dict[str, Any] | None = None,
                refitted: Trial | None = None) -> dict[str, Any]:
    """Rebuild the winner from its best epoch's state, evaluate it on the test split and save it
    as ``best/``; ``seeds``: its configuration's re-evaluation, recorded beside. ``refitted``:
    the refit of its configuration on train + valid (``recsearch.tuning.refit``), tested and
    saved instead; the validation figures stay the winner's. Without a re-evaluation this is the
    only time the sweep touches the test split."""
    from recsearch.evaluation import Evaluator
    from recsearch.training import refit_record

    config = plan.configs[trial.family]
    task = config["task"]
    if refitted is not None and refitted.status != "TERMINATED":
        raise SweepFailed(f"the refit of {trial.name} did not finish ({refitted.error or refitted.status})")
    data, source = (split, trial) if refitted is None else (split.train_and_valid(), refitted)
    saved = checkpoint.newest(source.path)
    model = restored(plan, trial, data, saved.best_state)
    row = trial.best(task["metric"])  # the chosen epoch's own metrics (a refit may train longer)
    epoch = row["epoch"]
    test = Evaluator.for_task(task, batch_size=config["train"]["eval_batch_size"]).evaluate(model, data, "test")
    valid = valid_metrics(row)
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
    metadata = {"sweep": plan.name, "trial": trial.name, "data": config["data"]["name"],
                "selected_by": selection(config), "epoch": epoch, "valid": valid, "test": test,
                "selected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if refitted is not None:  # the test figures are the refitted model's, the validation ones its selection's
        folder = refitted.path.rstrip("/").rsplit("/", 1)[-1]  # Tune's name for it: <winner>_refit
        best["refit"] = metadata["refit"] = {**refit_record(data, saved.best_epoch), "trial": folder}
    if seeds is not None:  # the model is the sweep trial's; the means are over its configuration's fresh seeds
        best["seeds"] = metadata["seeds"] = {key: seeds[key] for key in ("seeds", "runs", "valid", "test")}
        metadata["selected_by"] = f"mean {selection(config)} over {seeds['runs']} fresh seeds"
    target = Path(plan.out) / "best"
    shutil.rmtree(target, ignore_errors=True)
    model.save(target, metadata=metadata)
    return best


def restored(plan: SweepPlan, trial: Trial, data: Split, state: bytes):
    """``trial``'s model prepared on ``data.train`` with ``state`` (a checkpoint's)."""
    from recsearch.models.factory import build_model
    from recsearch.training import load_serialized

    config = plan.configs[trial.family]
    model = build_model(config["model"], seed=config["seed"], device=config["device"],
                        task=config["task"]["name"], **trial.hparams)
    model.prepare(data.train)
    load_serialized(model, state)
    return model


def selection(config: dict[str, Any]) -> str:
    """How trials are ranked, e.g. ``valid/ndcg@10 (max)``."""
    metric = config["task"]["metric"]
    return f"{valid_key(metric)} ({metric_mode(metric)})"


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    stopped = Counter(row["stopped"] for row in rows)
    return {"run": len(rows), "completed": sum(row["rank"] is not None for row in rows),
            "stopped_by_asha": stopped["asha"], "stopped_by_patience": stopped["patience"],
            "errored": stopped["error"], "unfinished": stopped["unfinished"]}


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
