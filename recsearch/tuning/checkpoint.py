"""A trial's checkpoint: one folder per reported epoch, describing itself.

    model.pt       the model's state after that epoch: what a resumed trial continues from
    best.pt        the state of the best epoch so far, when that is an earlier one
    progress.json  epoch, best value, best epoch, the metric's trend, epochs without improvement

States are read back with ``torch.load(weights_only=True)``. So the newest checkpoint alone
serves both resuming a trial and exporting its best epoch, and Tune keeps just the newest ones.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from recsearch.errors import RecsearchError
from recsearch.training import EpochEnd, Resume
from recsearch.tuning.storage import children, filesystem, read_text

STATE_FILE = "model.pt"
BEST_STATE_FILE = "best.pt"
PROGRESS_FILE = "progress.json"


def write(directory: Path, end: EpochEnd) -> None:
    epoch = end.row["epoch"]
    (directory / STATE_FILE).write_bytes(end.state)
    if end.stopper.best_epoch != epoch:
        (directory / BEST_STATE_FILE).write_bytes(end.best_state)
    stopper = end.stopper
    progress = {"epoch": epoch, "best": stopper.best, "best_epoch": stopper.best_epoch, "stale": stopper.stale,
                "trend": stopper.trend, "best_trend": stopper.best_trend}
    (directory / PROGRESS_FILE).write_text(json.dumps(progress))


def read(directory: Path) -> Resume:
    progress = json.loads((directory / PROGRESS_FILE).read_text())
    state = (directory / STATE_FILE).read_bytes()
    best = directory / BEST_STATE_FILE
    return Resume(epoch=int(progress["epoch"]), state=state, best_state=best.read_bytes() if best.exists() else state,
                  best=progress["best"], best_epoch=int(progress["best_epoch"]), stale=int(progress["stale"]),
                  # checkpoints written before the trend existed: the raw metric was the trend
                  trend=progress.get("trend", progress["best"]), best_trend=progress.get("best_trend", progress["best"]))


@contextmanager
def latest(trial_path: str) -> Iterator[Path | None]:
    """A local folder holding the trial's newest kept checkpoint (copied down from remote
    storage), or None when it has none."""
    from pyarrow import fs

    fs_, root = filesystem(trial_path)
    epochs = []
    for info in children(fs_, root):
        if info.base_name.startswith("checkpoint_"):
            text = read_text(fs_, f"{info.path}/{PROGRESS_FILE}")
            if text is not None:
                epochs.append((json.loads(text)["epoch"], info.path))
    if not epochs:
        yield None
        return
    _, path = max(epochs)
    if isinstance(fs_, fs.LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="recsearch-best-") as local:
        fs.copy_files(path, local, source_filesystem=fs_, destination_filesystem=fs.LocalFileSystem())
        yield Path(local)


def newest(trial_path: str) -> Resume:
    """The trial's newest kept checkpoint, read (its ``best_state`` is the best epoch's model)."""
    with latest(trial_path) as directory:
        if directory is None:
            raise RecsearchError(f"the trial in {trial_path} has no checkpoint left")
        return read(directory)
