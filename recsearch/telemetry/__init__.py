"""What recsearch tells Ray's metrics system: trial, sweep and serving metrics, recorded with
``ray.util.metrics`` in a long-lived process, the sweep's driver (trial metrics too, from what
each trial reports: ``recsearch.tuning.monitor``) or a Serve replica, and exported in Prometheus
text format by each node's metrics agent (``curl HOST:<metrics-export-port>/metrics``), which
Prometheus scrapes and the Grafana dashboards of ``recsearch/telemetry/dashboards/`` plot.

Ray prefixes every application metric with ``ray_``: ``recsearch_trial_loss`` is exported as
``ray_recsearch_trial_loss``; Ray also adds the labels ``SessionName``, ``NodeAddress`` and
``WorkerId`` (one series per process). Processes report their values to their node's agent every
``metrics_report_interval_ms`` (10 s by default; change it for the whole cluster with ``ray start
--head --system-config``: set per node through the environment, the agents and the processes
disagree and a gauge shows only now and then). Counters stay in the agent after their process
ends; a gauge disappears two intervals after its process stops reporting it.

Recording costs microseconds: nothing here waits for the agent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

RAY_PREFIX = "ray_"  # what Ray's exporter puts before every application metric name
TRIAL = ("sweep", "family", "trial")
SWEEP = ("sweep", "family")


@dataclass(frozen=True)
class Spec:
    kind: str  # counter, gauge or histogram
    description: str
    tags: tuple[str, ...]
    boundaries: tuple[float, ...] = ()  # histograms only: upper bounds of the buckets


# Ray exports a histogram's _sum from bucket midpoints, not from the values observed: bounds
# halfway between whole numbers make the sum exact for batch sizes up to 8 (16 and more are binned).
BATCH_BOUNDS = (0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 16.5, 32.5, 64.5, 128.5, 256.5, 512.5, 1024.5)
LATENCY_BOUNDS = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SPECS: dict[str, Spec] = {
    # every trial, every epoch (recorded by the sweep's driver as the trial reports it)
    "recsearch_trial_epochs_total": Spec("counter", "epochs the trial finished", TRIAL),
    "recsearch_trial_loss": Spec("gauge", "training loss of the trial's latest epoch", TRIAL),
    "recsearch_trial_valid_metric": Spec("gauge", "validation metrics of the trial's latest epoch",
                                         (*TRIAL, "metric")),
    "recsearch_trial_epoch_seconds_total": Spec("counter", "seconds the trial spent training epochs", TRIAL),
    "recsearch_trial_eval_seconds_total": Spec("counter", "seconds the trial spent on validation", TRIAL),
    # per sweep and family (recorded by the sweep's driver)
    "recsearch_sweep_trials_running": Spec("gauge", "trials running now", SWEEP),
    "recsearch_sweep_trials_ended_total": Spec(
        "counter", "trials ended, by outcome: completed, asha (stopped by ASHA), patience (stopped by "
                   "their own early stopping) or error", (*SWEEP, "outcome")),
    "recsearch_sweep_best_valid_metric": Spec("gauge", "best validation value of the selection metric so far",
                                              (*SWEEP, "metric")),
    # serving (recorded by each Serve replica); endpoint = the route, e.g. /recommend/user
    "recsearch_serve_requests_total": Spec("counter", "HTTP requests answered, by endpoint and status code",
                                           ("endpoint", "status")),
    "recsearch_serve_request_duration_seconds": Spec("histogram", "seconds from request to response",
                                                     ("endpoint",), LATENCY_BOUNDS),
    "recsearch_serve_batch_size": Spec("histogram", "requests answered by one forward pass", ("endpoint",),
                                       BATCH_BOUNDS),
    "recsearch_serve_fallbacks_total": Spec("counter", "answers not personalised by the model, by kind "
                                                       "(popularity, item_similarity)", ("endpoint", "kind")),
    "recsearch_serve_model_info": Spec("gauge", "1 for the model a replica serves, 0 for one it served before",
                                       ("model_id", "family")),
}


@functools.cache
def metric(name: str):
    """This process's Ray metric object for ``name`` (one of ``SPECS``), made on first use."""
    from ray.util import metrics

    spec = SPECS[name]
    if spec.kind == "histogram":
        return metrics.Histogram(name, spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tags)
    kind = {"counter": metrics.Counter, "gauge": metrics.Gauge}[spec.kind]
    return kind(name, spec.description, tag_keys=spec.tags)


def exported_series(name: str) -> set[str]:
    """The names under which Prometheus sees ``name``: with Ray's prefix, and a histogram's
    ``_bucket``, ``_sum`` and ``_count``."""
    full = RAY_PREFIX + name
    if SPECS[name].kind == "histogram":
        return {f"{full}_{part}" for part in ("bucket", "sum", "count")}
    return {full}


def add(name: str, value: float, tags: dict[str, str]) -> None:
    """Increase a counter; Ray refuses a zero increase, which changes nothing anyway."""
    if value > 0:
        metric(name).inc(value, tags)


def record_epoch(row: dict[str, Any], tags: dict[str, str]) -> None:
    """One finished epoch of a trial (``recsearch.training.train_step``'s row)."""
    from recsearch.evaluation.metrics import valid_metrics

    add("recsearch_trial_epochs_total", 1, tags)
    add("recsearch_trial_epoch_seconds_total", row["epoch_seconds"], tags)
    add("recsearch_trial_eval_seconds_total", row["eval_seconds"], tags)
    if "loss" in row:
        metric("recsearch_trial_loss").set(row["loss"], tags)
    for name, value in valid_metrics(row).items():
        metric("recsearch_trial_valid_metric").set(value, {**tags, "metric": name})


# -- serving --------------------------------------------------------------------------------
UNROUTED = "unrouted"  # the endpoint label of a request that matched no route (404)


def record_request(route: str | None, status: int, seconds: float) -> None:
    tags = {"endpoint": route or UNROUTED}
    metric("recsearch_serve_requests_total").inc(1, {**tags, "status": str(status)})
    metric("recsearch_serve_request_duration_seconds").observe(seconds, tags)


def record_batch(route: str, answers: list) -> None:
    """One forward pass: its size, and the answers that carry a ``fallback``."""
    metric("recsearch_serve_batch_size").observe(len(answers), {"endpoint": route})
    for answer in answers:
        if kind := getattr(answer, "fallback", None):
            metric("recsearch_serve_fallbacks_total").inc(1, {"endpoint": route, "kind": kind})


def record_model(loaded, replaced=None) -> None:
    """The model a replica now serves and the one it replaced (``ModelService`` objects)."""
    info = metric("recsearch_serve_model_info")
    if replaced is not None and replaced.model_id != loaded.model_id:
        info.set(0, {"model_id": replaced.model_id, "family": replaced.model.family})
    info.set(1, {"model_id": loaded.model_id, "family": loaded.model.family})
