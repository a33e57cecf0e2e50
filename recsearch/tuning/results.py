"""Reading a sweep's trials back from Tune's storage, without Ray and without unpickling.

Every family's experiment folder holds ``experiment_state-*.json`` (trial ids, statuses,
folders; JSON) and one folder per trial with ``result.json`` (one JSON line per reported
epoch), ``error.txt`` when it failed, and ``checkpoint_*/`` folders. The storage may be a local
folder or a URI such as ``s3://bucket/sweeps`` (read through pyarrow's filesystems).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsearch.errors import RecsearchError
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.trainable import PROGRESS_FILE

# Tune's bookkeeping keys that are not worth keeping per epoch
_KEPT = ("epoch", "loss", "epoch_seconds", "eval_seconds", "stale_epochs")


@dataclass
class Trial:
    family: str
    trial_id: str
    status: str  # Tune's: TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    hparams: dict[str, Any]
    history: list[dict[str, Any]]  # one row per epoch, sorted, the last report of an epoch kept
    error: str | None  # the exception line of error.txt
    path: str  # the trial's folder in the storage

    @property
    def name(self) -> str:
        return f"{self.family}_{self.trial_id}"

    def best(self, metric: str, mode: str) -> dict[str, Any] | None:
        """The epoch with the best ``valid/<metric>`` (the first of equals), or None."""
        key = f"valid/{metric}"
        rows = [row for row in self.history if row.get(key) is not None]
        if not rows:
            return None
        pick = max if mode == "max" else min
        return pick(rows, key=lambda row: row[key])


def collect_trials(plan: SweepPlan, families: list[str] | None = None) -> list[Trial]:
    trials = []
    for family in families or plan.families:
        trials.extend(_experiment_trials(family, plan.experiment_path(family)))
    return trials


@contextmanager
def latest_checkpoint(trial: Trial) -> Iterator[Path | None]:
    """A local folder holding the trial's newest kept checkpoint, which also carries the state of
    its best epoch (see ``recsearch.tuning.trainable``), copied down from remote storage."""
    from pyarrow import fs

    filesystem, root = _filesystem(trial.path)
    epochs = []
    for info in _children(filesystem, root):
        if info.base_name.startswith("checkpoint_"):
            text = _read(filesystem, f"{info.path}/{PROGRESS_FILE}")
            if text is not None:
                epochs.append((json.loads(text)["epoch"], info.path))
    if not epochs:
        yield None
        return
    _, path = max(epochs)
    if isinstance(filesystem, fs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="recsearch-best-") as local:
        fs.copy_files(path, local, source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
        yield Path(local)


def _experiment_trials(family: str, experiment: str) -> list[Trial]:
    filesystem, root = _filesystem(experiment)
    states = [info for info in _children(filesystem, root)
              if info.base_name.startswith("experiment_state-") and info.base_name.endswith(".json")]
    if not states:
        return []
    # a restored run writes a new file and re-uploads the old one: the newest is the latest name
    # (experiment_state-YYYY-MM-DD_HH-MM-SS.json), not the latest modification time
    latest = max(states, key=lambda info: info.base_name)
    state = _read_state(filesystem, latest.path)
    trials = []
    for trial_json, runtime_json in state["trial_data"]:
        meta, runtime = json.loads(trial_json), json.loads(runtime_json)
        folder = f"{root}/{meta['relative_logdir']}"
        trials.append(Trial(
            family=family,
            trial_id=meta["trial_id"],
            status=meta["status"],
            hparams=meta["config"],
            history=_history(_read(filesystem, f"{folder}/result.json") or ""),
            error=_error_line(_read(filesystem, f"{folder}/{runtime['error_filename']}"))
            if runtime.get("error_filename") else None,
            path=f"{experiment.rstrip('/')}/{meta['relative_logdir']}",
        ))
    return trials


def _read_state(filesystem, path: str, attempts: int = 20) -> dict[str, Any]:
    """Tune rewrites its state file in place while a sweep runs: retry a torn read."""
    for _ in range(attempts):
        try:
            return json.loads(_read(filesystem, path) or "")
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
        if "epoch" in result:  # a resumed trial may repeat an epoch: the last report wins
            by_epoch[result["epoch"]] = {k: v for k, v in result.items() if k in _KEPT or k.startswith("valid/")}
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


def _filesystem(path: str):
    from pyarrow import fs

    if "://" in path:
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), path


def _children(filesystem, root: str) -> list:
    from pyarrow import fs

    info = filesystem.get_file_info(root)
    if info.type != fs.FileType.Directory:
        return []
    return filesystem.get_file_info(fs.FileSelector(root))


def _read(filesystem, path: str) -> str | None:
    from pyarrow import fs

    if filesystem.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")
