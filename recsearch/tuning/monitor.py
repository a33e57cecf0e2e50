"""The sweep's metrics (``recsearch.telemetry``), recorded by its driver as Tune reports trial
events: every epoch of every trial (``TrialMetrics``), and per family the trials running, the
trials ended by outcome and the best validation value so far (``SweepMonitor``).

Trial epochs are recorded here, not in the trial's own process: a process's metrics reach its
node's agent only at each report interval, and a trial that ended between two (stopped by ASHA
or its patience, or finished) took its last epochs with it, a short trial all of them (seen on
the multi-node test cluster: two of three trials absent from Prometheus). The driver lives
through the whole experiment.

The callbacks are pickled with Tune's ``RunConfig`` (and restored with it by ``recsearch resume``):
they hold plain values only and look their Ray metric objects up in the process they run in.
"""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

from recsearch import telemetry
from recsearch.evaluation.metrics import metric_mode, reported_test, valid_key
from recsearch.tuning.leaderboard import stopped_by
from recsearch.tuning.results import Trial

# the leaderboard's `stopped` column -> the outcome label
OUTCOMES = {"no": "completed", "asha": "asha", "patience": "patience", "error": "error"}


class TrialMetrics(Callback):
    """Records every epoch a trial reports, tagged with the sweep, the family (``family``, or a
    re-evaluation or refit trial's own: ``config["run"]["family"]``) and the trial's name."""

    def __init__(self, sweep: str, family: str | None = None):
        self.tags = {"sweep": sweep, "family": family}

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if "epoch_seconds" in result and not reported_test(result):  # an epoch, not a trial's closing test
            family = self.tags["family"] or trial.config["run"]["family"]
            telemetry.record_epoch(result, {**self.tags, "family": family, "trial": str(trial)})


class SweepMonitor(TrialMetrics):
    def __init__(self, sweep: str, family: str, config: dict[str, Any]):
        super().__init__(sweep, family)
        self.config = config  # the family's composed config: what `stopped_by` reads
        self.metric = config["task"]["metric"]
        self.running: set[str] = set()
        self.best: float | None = None

    def setup(self, **info) -> None:
        """The experiment starts, or resumes in a new driver (with this callback's saved state):
        no trial runs yet, and the best value so far is known."""
        self.running.clear()
        self._export()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._set_running(trial.trial_id, True)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._set_running(trial.trial_id, False)  # waits to be started again from its checkpoint

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        super().on_trial_result(iteration, trials, trial, result, **info)
        value = result.get(valid_key(self.metric))
        if value is None:
            return
        if self.best is None or (value > self.best if metric_mode(self.metric) == "max" else value < self.best):
            self.best = value
            self._export()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "TERMINATED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "ERROR")

    def _ended(self, trial, status: str) -> None:
        self._set_running(trial.trial_id, False)
        last = trial.last_result or {}
        ended = Trial(self.tags["family"], trial.trial_id, status, {}, [last] if "epoch" in last else [], None, "")
        outcome = OUTCOMES[stopped_by(ended, self.config)]
        telemetry.add("recsearch_sweep_trials_ended_total", 1, {**self.tags, "outcome": outcome})

    def _set_running(self, trial_id: str, running: bool) -> None:
        (self.running.add if running else self.running.discard)(trial_id)
        self._export()

    def _export(self) -> None:
        telemetry.metric("recsearch_sweep_trials_running").set(len(self.running), self.tags)
        if self.best is not None:
            telemetry.metric("recsearch_sweep_best_valid_metric").set(self.best, {**self.tags, "metric": self.metric})
