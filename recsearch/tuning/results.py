"""Reading a sweep's trials back from Tune's storage, without Ray and without unpickling.

Every family's experiment folder holds ``experiment_state-*.json`` (trial ids, statuses,
folders; JSON) and one folder per trial with ``result.json`` (one JSON line per reported
epoch), ``error.txt`` when it failed, and ``checkpoint_*/`` folders. The storage may be a local
folder or a URI such as ``s3://bucket/sweeps`` (read through pyarrow's filesystems).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from recsearch.errors import RecsearchError
from recsearch.evaluation.metrics import TEST_PREFIX, VALID_PREFIX, metric_mode, valid_key
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.storage import children, filesystem, read_text

# Tune's bookkeeping keys that are not worth keeping per epoch
_KEPT = ("epoch", "loss", "epoch_seconds", "eval_seconds", "stale_epochs", "stopped", "best_epoch")
_PREFIXES = (VALID_PREFIX, TEST_PREFIX)


@dataclass
class Trial:
    family: str  # the experiment it ran in: its model family, or the re-evaluation's
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    hparams: dict[str, Any]
    history: list[dict[str, Any]]  # one row per epoch, sorted, the last report of an epoch kept
    error: str | None  # the exception line of error.txt
    path: str  # the trial's folder in the storage

    @property
    def name(self) -> str:
        return f"{self.family}_{self.trial_id}"

    def best(self, metric: str) -> dict[str, Any] | None:
        """The epoch with the best ``valid/<metric>`` (the first of equals), or None."""
        key = valid_key(metric)
        rows = [row for row in self.history if row.get(key) is not None]
        if not rows:
            return None
        pick = max if metric_mode(metric) == "max" else min
        return pick(rows, key=lambda row: row[key])


def collect_trials(plan: SweepPlan, families: list[str] | None = None) -> list[Trial]:
    return [trial for family in families or plan.families for trial in experiment_trials(plan, family)]


def experiment_trials(plan: SweepPlan, name: str) -> list[Trial]:
    """The trials of one Tune experiment of the sweep: a family's (``family`` is its name) or
    the re-evaluation's."""
    experiment = plan.experiment_path(name)
    fs_, root = filesystem(experiment)
    states = [info for info in children(fs_, root)
              if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")]
    if not states:
        return []
    # a restored run writes a new file and re-uploads the old one: the newest is the latest name
    # (experiment_state-YYYY-MM-DD_HH-MM-SS.json), not the latest modification time
    latest = max(states, key=lambda info: info.base_name)
    state = _read_state(fs_, latest.path)
    trials = []
    for trial_json, runtime_json in state["trial_data"]:
        meta, runtime = json.loads(trial_json), json.loads(runtime_json)
        folder = f"{root}/{meta['relative_logdir']}"
        trials.append(Trial(
            family=name,
            trial_id=meta["trial_id"],
            status=meta["status"],
            hparams=meta["config"],
            history=_history(read_text(fs_, f"{folder}/result.json") or ""),
            error=_error_line(read_text(fs_, f"{folder}/{runtime['error_filename']}"))
            if runtime.get("error_filename") else None,
            path=f"{experiment.rstrip('/')}/{meta['relative_logdir']}",
        ))
    return trials


def _read_state(fs_, path: str, attempts: int = 20) -> dict[str, Any]:
    """Tune rewrites its state file in place while a sweep runs: retry a torn read."""
    for _ in range(attempts):
        try:
            return json.loads(read_text(fs_, path) or "")
        except json.JSONDecodeError:
            time.sleep(0.1)
    raise RecsearchError(f"{path} does not parse as JSON, even after {attempts} attempts")


def _history(text: str) -> list[dict[str, Any]]:
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:  # blank, or the line a running trial is writing right now
            continue
        if "epoch" in result:  # a resumed trial may repeat an epoch: the last report of a key wins
            by_epoch.setdefault(result["epoch"], {}).update(
                {k: v for k, v in result.items() if k in _KEPT or k.startswith(_PREFIXES)})
    return [by_epoch[e] for e in sorted(by_epoch)]


def _error_line(text: str | None) -> str | None:
    """The exception's own line (``FloatingPointError: ...``) from a Tune error file."""
    if not text:
        return None
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) and " " not in head:
            return line
    return lines[-1]
