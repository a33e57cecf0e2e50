"""Sweeps and serving on a real multi-node Ray cluster: a head and two worker nodes, separate
processes on loopback (tests/helpers/multinode.py), token authentication on. Everything
reaches the cluster the way a user's laptop would: ``recsearch submit`` / ``ray job submit``
through the head's Jobs API, ``recsearch serve --address``, HTTP. This process never joins
the cluster.

The nodes share this machine's disk, so a local folder stands in for the shared file system
(EFS, NFS) of cluster.yaml: Tune's storage_path and the sweep's out= live in it, the same code
path as on the cluster. Like cluster.yaml's nodes, the nodes run recsearch from one virtual
environment, found on their PATH.

A laptop: a sweep is also submitted from another environment, a "laptop" with its own checkout and
interpreter, whose folder is hidden from every node (their own mount namespace): the job must run
the cluster's recsearch, and with --working-dir the laptop's edited checkout. The same sweep's
trial and sweep metrics, and a served model's request metrics, are read from the nodes' metrics
agents as Prometheus would, and checked against the leaderboard and the requests sent.

Faults:
  * the driver is killed: `recsearch resume` finishes the sweep without re-running finished trials;
  * a worker node crashes mid-sweep: its trial resumes from its last checkpoint on the other node
    (the same sweep shows where trials run and where results land: observed once, checked twice);
  * a Serve replica is killed: the application recovers, and we count the failed requests.
Tests that crash a node come after those that need both; a test that finds one missing starts
a replacement.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from helpers.multinode import (
    BIN,
    Laptop,
    LoopbackCluster,
    MetricsWatch,
    hiding_works,
    select,
    total_by,
)

from recsearch.models.base import Recommender
from recsearch.models.pop import Popularity
from recsearch.telemetry import SPECS, exported_series
from recsearch.telemetry.grafana import dashboard_files
from recsearch.tuning.monitor import OUTCOMES

pytestmark = pytest.mark.ray

# A small synthetic dataset and a fast MF (epochs of 0.1-0.5 s), so that a whole sweep stays
# under a minute; the crashed sweep runs enough epochs for the crash to land mid-trial.
SMALL_DATA = ["data.source.n_users=1000", "data.source.n_items=500", "data.source.n_interactions=30000"]
SMALL_MF = [
    "model=mf", "model.batch_size=256", "search.space.dim={choice:[8,16]}",
    "~search.space.negatives", *SMALL_DATA, "ray.max_failures=3",
    "train.min_epochs=1",  # no warm-up: these sweeps run a few epochs, and ASHA's grace period follows it
    "search.reevaluate.enabled=false",  # the faults hit the sweep's own trials; no re-evaluation after them
]
# Every trial runs every epoch (no ASHA, no patience): a fault then always finds trials running.
FULL_LENGTH = ["scheduler=fifo", "train.patience=100"]
# Batches of 16 make an epoch of this MF about 0.5 s: the fault tests' trials then run long
# enough to be caught running, whatever the start-up skew of their actors and however seldom
# Tune snapshots its experiment state (every second).
HALF_SECOND_EPOCHS = "model.batch_size=16"
CRASHED_SWEEP_EPOCHS = 30  # the crash comes after epoch 2-10: at least 20 epochs are still to run
DRIVER_SWEEP_EPOCHS = 6


def log(message: str) -> None:
    print(f"[multinode] {message}", flush=True)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    hidden = [root / "laptop"] if hiding_works() else []  # where the laptop lives: see `laptop`
    with LoopbackCluster(root, workers=2, hidden=hidden) as cluster:
        log(f"cluster of 1 head + 2 workers started in {cluster.start_seconds:.1f}s")
        yield cluster


@pytest.fixture
def workers(cluster):
    """Two live worker nodes (a test before may have crashed one)."""
    missing = 3 - len(cluster.alive_nodes())
    for _ in range(missing):
        cluster.add_worker()
    return cluster


def shared(cluster: LoopbackCluster) -> Path:
    """The folder every node reads and writes: the stand-in for EFS at /mnt/shared."""
    return cluster.root / "shared"


def sweep_args(cluster: LoopbackCluster, name: str, *overrides: str) -> list[str]:
    return [*SMALL_MF, *overrides, f"out={shared(cluster)}/sweeps/{name}",
            f"ray.storage_path={shared(cluster)}/tune"]


def submit(cluster: LoopbackCluster, overrides: list[str]) -> str:
    """`recsearch submit --no-wait ...` as a user would type it; returns the job id."""
    result = cluster.run([str(BIN / "recsearch"), "submit", "--no-wait", "--address", cluster.dashboard_url,
                          *overrides], timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("submitted job ", 1)[1].split()[0]


def wait_for_job(cluster: LoopbackCluster, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = cluster.job_status(job_id)
        if status["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(f"job {job_id} still {status['status']} after {timeout}s:\n{cluster.job_logs(job_id)[-3000:]}")


def trial_dirs(cluster: LoopbackCluster, sweep: str) -> dict[str, Path]:
    """Tune's trial folders of the sweep's mf experiment in the shared storage."""
    experiment = shared(cluster) / "tune" / sweep / "mf"
    return {d.name: d for d in sorted(experiment.glob("mf_*")) if d.is_dir()}


def reports(trial: Path) -> list[dict]:
    """Every result the trial reported, in order (Tune appends to result.json, also on restore)."""
    path = trial / "result.json"
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line being written right now
            pass
    return rows


def trial_states(cluster: LoopbackCluster, sweep: str) -> dict[str, str]:
    """Trial name -> Tune status, from the experiment state the driver saves every second. A
    resumed run writes a new file and keeps re-copying the old one: the newest is the one whose
    name (its run's start time) sorts last, as Tune itself picks it, not the latest modified."""
    experiment = shared(cluster) / "tune" / sweep / "mf"
    states = sorted(experiment.glob("experiment_state-*.json"))
    if not states:
        return {}
    try:
        data = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # caught mid-write
        return {}
    trials = (json.loads(trial) for trial, _ in data["trial_data"])
    return {f"mf_{t['trial_id']}": t["status"] for t in trials}


def summary(cluster: LoopbackCluster, sweep: str) -> dict:
    return json.loads((shared(cluster) / "sweeps" / sweep / "summary.json").read_text())


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout}s")


def assert_every_trial_accounted_for(result: dict, trials: int) -> None:
    """Every trial ranked (finished or stopped early) or errored with its reason; none left over."""
    counts = result["trials"]
    assert counts["run"] == trials and counts["unfinished"] == 0, counts
    assert counts["completed"] + counts["errored"] == trials, counts
    assert all(e["error"] for e in result["errors"]), "an errored trial must say why"


def leaderboard(out: Path) -> list[dict]:
    with open(out / "leaderboard.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# -- submitted from a laptop -----------------------------------------------------------------
@pytest.fixture(scope="module")
def laptop(cluster) -> Laptop:
    """A laptop's environment (its checkout and interpreter) in a folder no node can see."""
    if not cluster.hidden:
        pytest.skip("no mount namespaces here (unshare): a laptop's files cannot be hidden from the nodes")
    return Laptop.create(cluster.hidden[0], ROOT)


@dataclass
class LaptopSweep:
    """A sweep submitted from the laptop, and the recsearch metrics seen while it ran."""

    name: str
    out: Path
    job: dict  # the Jobs API's record of it
    samples: dict


@pytest.fixture(scope="module")
def laptop_sweep(cluster, laptop) -> LaptopSweep:
    """Three MF trials of up to four epochs, ASHA and a patience of one epoch stopping some
    early: `recsearch submit`, run from the laptop's checkout by the laptop's Python, follows
    the job to its end."""
    name = "from-laptop"
    overrides = sweep_args(cluster, name, "search.num_samples=3", "train.max_epochs=4", "train.patience=1")
    with MetricsWatch(cluster) as watch:
        done = laptop.run(cluster, ["submit", "--address", cluster.dashboard_url, *overrides], timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
        out = shared(cluster) / "sweeps" / name
        board = leaderboard(out)
        # the processes report every second: wait for the last epochs and trial ends to arrive
        wait_until(lambda: sum(total_by(watch.samples, "ray_recsearch_sweep_trials_ended_total", "outcome",
                                        sweep=name).values()) >= len(board), 30, "every trial's end in the metrics")
    return LaptopSweep(name, out, cluster.job_status(job_id), watch.samples)


@pytest.mark.timeout(400)
def test_a_sweep_submitted_from_another_environment_runs_the_clusters_recsearch(cluster, laptop, laptop_sweep):
    job = laptop_sweep.job
    assert job["status"] == "SUCCEEDED", cluster.job_logs(job["submission_id"])[-3000:]
    assert job["entrypoint"].startswith("recsearch sweep ") and str(laptop.home) not in job["entrypoint"]
    assert "note: this sweep's driver runs in this process" not in cluster.job_logs(job["submission_id"])
    assert job["metadata"] == {"recsearch_sweep": "from-laptop", "recsearch_families": "mf",
                               "recsearch_out": str(laptop_sweep.out)}
    assert len(leaderboard(laptop_sweep.out)) == 3
    assert (laptop_sweep.out / "best" / "model.json").is_file()


def test_a_relative_out_is_refused_before_anything_is_submitted(cluster, laptop):
    overrides = [o for o in sweep_args(cluster, "relative") if not o.startswith("out=")]
    for out, refusal in [("out=runs/mine", "out=runs/mine is relative to this machine's working directory"),
                         (None, "recsearch submit needs out=")]:
        done = laptop.run(cluster, ["submit", "--address", cluster.dashboard_url, *overrides, *([out] if out else [])])
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and refusal in done.stderr, done.stderr


# Exists in the laptop's checkout only: a sweep naming it runs only if the checkout travels.
LAPTOP_EXPERIMENT = """# @package _global_
search:
  space:
    dim: {choice: [12]}
"""


@pytest.mark.timeout(300)
def test_working_dir_ships_the_laptops_edited_checkout(cluster, laptop):
    (laptop.checkout / "conf" / "experiment" / "laptop_edit.yaml").write_text(LAPTOP_EXPERIMENT)
    out = shared(cluster) / "sweeps" / "edited"
    overrides = [o for o in SMALL_MF if not o.startswith("search.space.dim")]
    done = laptop.run(cluster, ["submit", "--address", cluster.dashboard_url, "--working-dir", str(laptop.checkout),
                                *overrides, "+experiment=laptop_edit", "search.num_samples=1", "train.max_epochs=2",
                                f"out={out}", f"ray.storage_path={shared(cluster)}/tune"], timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [json.loads(row["hparams"])["dim"] for row in leaderboard(out)] == [12]


@pytest.mark.timeout(400)
def test_trial_and_sweep_metrics_reach_prometheus(laptop_sweep):
    samples, name = laptop_sweep.samples, laptop_sweep.name
    board = leaderboard(laptop_sweep.out)
    trials = {row["trial"] for row in board}
    for metric in SPECS:
        if metric.startswith("recsearch_trial_"):
            seen = select(samples, "ray_" + metric, sweep=name)
            assert seen and all(tags["family"] == "mf" and tags["trial"] in trials for tags, _ in seen), metric
    # every epoch counted once, as many as the leaderboard says each trial ran
    epochs = total_by(samples, "ray_recsearch_trial_epochs_total", "trial", sweep=name)
    assert epochs == {row["trial"]: float(row["epochs"]) for row in board}
    assert all(0 < v <= 1 for _, v in select(samples, "ray_recsearch_trial_valid_metric", sweep=name, metric="ndcg@10"))
    assert all(v > 0 for _, v in select(samples, "ray_recsearch_trial_loss", sweep=name))
    seconds = total_by(samples, "ray_recsearch_trial_epoch_seconds_total", "trial", sweep=name)
    assert seconds.keys() == trials and all(v > 0 for v in seconds.values())
    # the driver's account: how every trial ended, as the leaderboard has it; the best value
    outcomes = total_by(samples, "ray_recsearch_sweep_trials_ended_total", "outcome", sweep=name, family="mf")
    assert outcomes == dict(collections.Counter(OUTCOMES[row["stopped"]] for row in board))
    best = select(samples, "ray_recsearch_sweep_best_valid_metric", sweep=name, family="mf", metric="ndcg@10")
    assert best and best[0][1] == pytest.approx(max(float(row["ndcg@10"]) for row in board))
    running = select(samples, "ray_recsearch_sweep_trials_running", sweep=name, family="mf")
    assert running and all(0 <= v <= 2 for _, v in running), "at most one trial per worker CPU"


@pytest.mark.timeout(300)
def test_a_sweep_run_here_on_the_cluster_says_how_to_run_it_as_a_job(cluster):
    """`recsearch sweep ray.address=...` keeps its driver in this process (README: why): it says
    how to get the log into the dashboard, and its driver job carries the sweep's metadata."""
    out = shared(cluster) / "sweeps" / "driver-here"
    overrides = ["model=pop", "search.num_samples=1", *SMALL_DATA, f"out={out}",
                 f"ray.storage_path={shared(cluster)}/tune"]
    done = cluster.run([str(BIN / "recsearch"), "sweep", *overrides, f"ray.address={cluster.address}"], timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"recsearch submit --address {cluster.dashboard_url} {shlex.join(overrides)}\n" in done.stdout
    jobs = httpx.get(f"{cluster.dashboard_url}/api/jobs/", headers=cluster.headers, timeout=10).json()
    driver = [j for j in jobs if j["type"] == "DRIVER" and j["metadata"].get("recsearch_sweep") == "driver-here"]
    assert len(driver) == 1 and driver[0]["metadata"]["recsearch_out"] == str(out)


# -- fault: the driver dies ------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_a_killed_driver_resumes_without_rerunning_finished_trials(workers):
    cluster = workers
    sweep = "driver-lost"
    out = shared(cluster) / "sweeps" / sweep
    # the third trial runs for seconds after the first two end: a window no state snapshot misses
    job_id = submit(cluster, sweep_args(cluster, sweep, *FULL_LENGTH, "search.num_samples=3",
                                        HALF_SECOND_EPOCHS, f"train.max_epochs={DRIVER_SWEEP_EPOCHS}"))

    def some_finished_some_not():
        states = trial_states(cluster, sweep)
        finished = {t for t, s in states.items() if s == "TERMINATED"}
        return finished if len(states) == 3 and 0 < len(finished) < 3 else None

    finished = wait_until(some_finished_some_not, 180, "a sweep half done", interval=0.2)
    driver = cluster.job_status(job_id)["driver_info"]
    os.kill(int(driver["pid"]), signal.SIGKILL)
    log(f"killed the driver (pid {driver['pid']}) with {len(finished)} of 3 trials finished")
    assert wait_for_job(cluster, job_id, timeout=60)["status"] == "FAILED"
    finished_reports = {t: (trial_dirs(cluster, sweep)[t] / "result.json").read_text() for t in finished}

    start = time.perf_counter()
    result = cluster.run([str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--",
                          sys.executable, "-m", "recsearch", "resume", str(out)], timeout=240)
    log(f"`recsearch resume` as a Ray job: {time.perf_counter() - start:.1f}s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    assert trial_states(cluster, sweep) == {t: "TERMINATED" for t in trial_dirs(cluster, sweep)}
    for trial, before in finished_reports.items():
        assert (trial_dirs(cluster, sweep)[trial] / "result.json").read_text() == before, f"{trial} ran again"
    for name, trial in trial_dirs(cluster, sweep).items():
        assert sorted({r["epoch"] for r in reports(trial)}) == list(range(1, DRIVER_SWEEP_EPOCHS + 1)), name
    assert_every_trial_accounted_for(summary(cluster, sweep), trials=3)
    assert (out / "best" / "model.json").is_file()


# -- the multi-node sweep, and a worker node crashing in the middle of it --------------------
@dataclass
class CrashedSweep:
    """What one sweep with a node crash in the middle showed (observed once, checked twice)."""

    job_id: str
    status: dict
    trial_nodes: set[str]  # node ids of every trial actor of the sweep, before and after the crash
    victim_trial: str
    victim_actor: dict  # the trial's actor on the node that crashed
    crashed_node: str


@pytest.fixture(scope="module")
def crashed_sweep(cluster) -> CrashedSweep:
    """A sweep of two trials submitted as a Ray job; once both run, one on each worker, and one
    has checkpointed two epochs, that trial's worker node crashes (raylet SIGKILL)."""
    for _ in range(3 - len(cluster.alive_nodes())):
        cluster.add_worker()
    sweep = "multinode"
    submitted = time.perf_counter()
    job_id = submit(cluster, sweep_args(cluster, sweep, *FULL_LENGTH, "search.num_samples=2",
                                        HALF_SECOND_EPOCHS, f"train.max_epochs={CRASHED_SWEEP_EPOCHS}"))
    seen: dict[str, dict] = {}  # actor id -> actor, every trial actor of this sweep

    def both_workers_busy_and_a_checkpoint():
        ray_job = cluster.job_status(job_id)["job_id"]
        alive = [a for a in cluster.actors(class_name="ImplicitFunc", state="ALIVE") if a["job_id"] == ray_job]
        seen.update({a["actor_id"]: a for a in alive})
        if len({a["node_id"] for a in alive}) < 2:
            return None
        by_pid = {a["pid"]: a for a in alive}
        for name, trial in trial_dirs(cluster, sweep).items():
            rows = reports(trial)
            if 2 <= len(rows) <= 10 and rows[-1]["pid"] in by_pid and any(trial.glob("checkpoint_*")):
                return name, by_pid[rows[-1]["pid"]]
        return None

    victim_trial, actor = wait_until(both_workers_busy_and_a_checkpoint, 180, "both workers running trials")
    node = next(n for n in cluster.nodes if n.node_id == actor["node_id"])
    cluster.kill_node(node)
    crashed_at = time.perf_counter()
    log(f"killed {node.name} (raylet SIGKILL) {crashed_at - submitted:.1f}s after submission, "
        f"while {victim_trial} was running on it")

    def restored():
        rows = reports(trial_dirs(cluster, sweep)[victim_trial])
        return any(r["iterations_since_restore"] == 1 and r["epoch"] > 1 for r in rows)

    wait_until(restored, 120, f"{victim_trial} resumed on the remaining node")
    log(f"{victim_trial} reported from its checkpoint {time.perf_counter() - crashed_at:.1f}s after the crash")
    status = wait_for_job(cluster, job_id)
    ray_job = status["job_id"]
    seen.update({a["actor_id"]: a for a in cluster.actors(class_name="ImplicitFunc") if a["job_id"] == ray_job})
    log(f"sweep finished {time.perf_counter() - crashed_at:.1f}s after the crash, "
        f"{time.perf_counter() - submitted:.1f}s after submission")
    return CrashedSweep(job_id, status, {a["node_id"] for a in seen.values()}, victim_trial, actor, node.node_id)


@pytest.mark.timeout(300)
def test_sweep_submitted_as_a_job_runs_its_trials_on_the_worker_nodes(cluster, crashed_sweep):
    assert crashed_sweep.status["status"] == "SUCCEEDED", cluster.job_logs(crashed_sweep.job_id)[-3000:]
    workers = {n.node_id for n in cluster.nodes if n.name.startswith("worker")}
    assert crashed_sweep.trial_nodes <= workers, "no trial may run on the head"
    assert crashed_sweep.crashed_node in crashed_sweep.trial_nodes and len(crashed_sweep.trial_nodes) >= 2

    out = shared(cluster) / "sweeps" / "multinode"
    for name in ("leaderboard.csv", "report.html", "summary.json"):
        assert (out / name).is_file(), name
    assert len(trial_dirs(cluster, "multinode")) == 2, "trial results belong in the shared storage_path"
    best = Recommender.load(out / "best", device="cpu")
    assert best.family == "mf" and best.metadata["sweep"] == "multinode"
    assert best.score([0, 1]).shape == (2, best.n_items)


@pytest.mark.timeout(300)
def test_trials_of_a_crashed_worker_node_resume_from_their_checkpoints(cluster, crashed_sweep):
    result = summary(cluster, "multinode")
    assert_every_trial_accounted_for(result, trials=2)
    assert result["trials"]["completed"] == 2, result["trials"]  # max_failures=3: nobody gave up
    trials = trial_dirs(cluster, "multinode")
    rows = reports(trials[crashed_sweep.victim_trial])
    lost_pid = crashed_sweep.victim_actor["pid"]
    before_crash = [r["epoch"] for r in rows if r["pid"] == lost_pid]
    restart = next(r for r in rows if r["iterations_since_restore"] == 1 and r["epoch"] > 1)
    log(f"{crashed_sweep.victim_trial}: epochs {before_crash} on the crashed node, resumed at epoch {restart['epoch']}")
    assert restart["pid"] != lost_pid
    assert 1 < restart["epoch"] <= max(before_crash) + 1, "resumed from its last checkpoint, not from scratch"
    for name, trial in trials.items():  # no result lost: every epoch reported
        assert sorted({r["epoch"] for r in reports(trial)}) == list(range(1, CRASHED_SWEEP_EPOCHS + 1)), name


# -- fault: a Serve replica dies -----------------------------------------------------------
KILL_REPLICA = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
ray.kill(ray.get_actor(sys.argv[2], namespace="serve"), no_restart=True)
"""


@pytest.fixture(scope="module")
def served_model(cluster, planted_split):
    """A model on the shared disk, served by two replicas of half a CPU each: they fit whether
    one worker node is left or two. The cluster's teardown removes the application."""
    model_dir = shared(cluster) / "models" / "pop"
    Popularity(seed=0, device="cpu").fit(planted_split.train).save(model_dir)
    return cluster, cluster.serve(model_dir, "--replicas", "2", "--num-cpus", "0.5", timeout=180)


def replicas(cluster: LoopbackCluster) -> list[dict]:
    """The Recommender deployment's replicas as Serve's controller reports them."""
    response = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", headers=cluster.headers, timeout=10)
    response.raise_for_status()
    app = response.json()["applications"].get("recsearch", {})
    return app.get("deployments", {}).get("Recommender", {}).get("replicas", [])


@dataclass
class ServedTraffic:
    """Requests sent one at a time to the served model, what they got, and the serving metrics
    the cluster exported before and after them."""

    answers: list[tuple[str, int, dict]]  # (endpoint, status, body)
    before: dict
    after: dict


REQUESTS = [  # (endpoint, body, times): known and unknown users, a refused k, items, a history
    ("/recommend/user", {"user": "u1", "k": 5}, 5),
    ("/recommend/user", {"user": "stranger", "k": 5}, 3),
    ("/recommend/user", {"user": "u1", "k": 0}, 2),
    ("/similar-items", {"item": "i1", "k": 3}, 2),
    ("/recommend/history", {"items": ["i1", "i5"], "k": 3}, 2),
    ("/recommend/history", {"items": [], "k": 3}, 1),
]


def serving_counts(samples: dict) -> dict:
    return {name: total_by(samples, f"ray_recsearch_serve_{name}", by) for name, by in [
        ("requests_total", ("endpoint", "status")), ("request_duration_seconds_count", "endpoint"),
        ("batch_size_sum", "endpoint"), ("batch_size_count", "endpoint"), ("fallbacks_total", ("endpoint", "kind"))]}


@pytest.fixture(scope="module")
def served_traffic(served_model) -> ServedTraffic:
    cluster, url = served_model
    before = cluster.scrape()
    answers = []
    with httpx.Client(timeout=30) as http:
        for endpoint, body, times in REQUESTS:
            for _ in range(times):
                response = http.post(url + endpoint, json=body)
                answers.append((endpoint, response.status_code, response.json()))
        health = http.get(f"{url}/health")
        answers.append(("/health", health.status_code, health.json()))
    expected = expected_counts(answers)

    def arrived():  # replicas report every second
        after = cluster.scrape()
        return after if all(delta(serving_counts(before)[n], serving_counts(after)[n]) == expected[n]
                            for n in expected) else None

    after = wait_until(arrived, 30, "the requests in the serving metrics") if expected else before
    return ServedTraffic(answers, before, after)


def delta(before: dict, after: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def expected_counts(answers: list[tuple[str, int, dict]]) -> dict:
    """The serving metrics' increase the answers call for. Requests one at a time: every
    forward pass answers one request (a refused k never reaches one)."""
    requests = collections.Counter((e, str(status)) for e, status, _ in answers)
    batched = collections.Counter(e for e, status, _ in answers if status == 200 and e != "/health")
    fallbacks = collections.Counter((e, body["fallback"]) for e, _, body in answers if body.get("fallback"))
    return {"requests_total": dict(requests),
            "request_duration_seconds_count": dict(collections.Counter(e for e, _, _ in answers)),
            "batch_size_sum": dict(batched), "batch_size_count": dict(batched), "fallbacks_total": dict(fallbacks)}


@pytest.mark.timeout(300)
def test_serving_metrics_count_the_requests_sent(served_traffic):
    statuses = collections.Counter(status for _, status, _ in served_traffic.answers)
    assert statuses == {200: 14, 422: 2}, "the requests exercise answers, a fallback and a refusal"
    assert any(body.get("fallback") == "popularity" for _, _, body in served_traffic.answers)
    before, after = serving_counts(served_traffic.before), serving_counts(served_traffic.after)
    expected = expected_counts(served_traffic.answers)
    for name in expected:
        assert delta(before[name], after[name]) == expected[name], name
    health = served_traffic.answers[-1][2]
    served = select(served_traffic.after, "ray_recsearch_serve_model_info", model_id=health["model_id"])
    assert served and all(tags["family"] == health["family"] == "pop" and v == 1 for tags, v in served)


@pytest.mark.timeout(400)
def test_every_dashboard_panel_plots_series_the_cluster_exported(laptop_sweep, served_traffic):
    exported = {name for name, _ in (*laptop_sweep.samples, *served_traffic.after)}
    ours = set().union(*(exported_series(name) for name in SPECS))
    for path in dashboard_files():
        for panel in json.loads(path.read_text())["panels"]:
            queried = {m for target in panel["targets"] for m in re.findall(r"ray_recsearch_\w+", target["expr"])}
            assert queried and queried <= ours and queried <= exported, f"{path.name}: {panel['title']}"


def test_dashboards_install_where_the_heads_grafana_provisioning_reads(cluster):
    session = next(n for n in cluster.nodes if n.name == "head").temp_dir / "session_latest"
    done = cluster.run([str(BIN / "recsearch"), "dashboards", "--session", str(session)], timeout=60)
    assert done.returncode == 0, done.stderr
    folder = session / "metrics" / "grafana" / "dashboards"  # Ray's own dashboards live there
    assert (folder / "default_grafana_dashboard.json").is_file()
    for path in dashboard_files():
        assert json.loads((folder / f"recsearch_{path.name}").read_text()) == json.loads(path.read_text())


@pytest.mark.timeout(300)
def test_serve_recovers_from_a_killed_replica(served_model):
    cluster, url = served_model
    running = [r for r in replicas(cluster) if r["state"] == "RUNNING"]
    assert len(running) == 2
    victim = running[0]
    outcomes: list[tuple[float, bool]] = []  # (time, succeeded)
    stop = threading.Event()

    def client():
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    ok = http.post(f"{url}/recommend/user", json={"user": "u1", "k": 5}).status_code == 200
                except httpx.HTTPError:
                    ok = False
                outcomes.append((time.perf_counter(), ok))

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sum(ok for _, ok in outcomes) >= 20, 60, "traffic flowing before the kill")
        kill_started = time.perf_counter()
        kill = cluster.run([sys.executable, "-c", KILL_REPLICA, cluster.address, victim["actor_name"]], timeout=120)
        assert kill.returncode == 0, kill.stderr[-3000:]
        killed_at = time.perf_counter()  # ray.kill has returned: the replica is gone

        def replaced():
            states = [r for r in replicas(cluster) if r["state"] == "RUNNING"]
            return len(states) == 2 and victim["replica_id"] not in {r["replica_id"] for r in states}

        wait_until(replaced, 90, "a new replica in place of the killed one", interval=0.25)
        recovered_at = time.perf_counter()
        wait_until(lambda: sum(ok for t, ok in outcomes if t > recovered_at) >= 20, 60, "requests after recovery")
    finally:  # the client stops whatever happened
        stop.set()
        thread.join(timeout=15)

    during = [ok for t, ok in outcomes if kill_started <= t <= recovered_at]
    failed = during.count(False)
    after = [ok for t, ok in outcomes if t > recovered_at]
    log(f"replica {victim['replica_id']} killed: replaced in {recovered_at - killed_at:.1f}s; "
        f"{failed} of {len(during)} requests failed meanwhile, {after.count(False)} of {len(after)} after")
    assert failed <= 5, "the surviving replica should have taken the traffic"
    assert all(after[-20:]), "requests succeed again once the replica is replaced"


@pytest.mark.timeout(300)
def test_four_trials_share_one_gpu_and_each_is_told_its_gpu(cluster):
    """A worker that advertises one GPU (Ray's accounting: this machine has no CUDA). At
    ray.gpus_per_trial=0.25 its four trials hold a quarter each, all at once, and each trial
    sees the GPU Ray gave it: device=auto would train on it where CUDA exists, here on the CPU."""
    gpu_worker = cluster.add_worker("--num-gpus=1")
    try:
        job_id = submit(cluster, sweep_args(cluster, "gpu-share", *FULL_LENGTH, HALF_SECOND_EPOCHS,
                                            "search.num_samples=4", "train.max_epochs=4",
                                            "ray.cpus_per_trial=0.25", "ray.gpus_per_trial=0.25"))
        most_at_once, on_gpu_node = 0, {}
        while cluster.job_status(job_id)["status"] not in ("SUCCEEDED", "FAILED", "STOPPED"):
            ray_job = cluster.job_status(job_id)["job_id"]
            alive = [a for a in cluster.actors(class_name="ImplicitFunc", state="ALIVE") if a["job_id"] == ray_job]
            on_gpu_node.update({a["actor_id"]: a for a in alive if a["node_id"] == gpu_worker.node_id})
            most_at_once = max(most_at_once, len([a for a in alive if a["node_id"] == gpu_worker.node_id]))
            time.sleep(0.3)
        status = wait_for_job(cluster, job_id)
    finally:
        cluster.kill_node(gpu_worker)  # the other tests' trials keep to the CPU workers
    assert status["status"] == "SUCCEEDED", cluster.job_logs(job_id)[-3000:]
    assert most_at_once == 4, f"at most {most_at_once} trials ran on the GPU node at once"
    # Tune places each trial in a placement group: its share shows as <resource>_group_<id>
    held = [{kind: v for k, v in a["required_resources"].items() for kind in ("CPU", "GPU")
             if re.fullmatch(rf"{kind}_group_[0-9a-f]+", k)} for a in on_gpu_node.values()]
    assert held and all(r == {"CPU": 0.25, "GPU": 0.25} for r in held), held
    trials = trial_dirs(cluster, "gpu-share")
    assert len(trials) == 4
    for trial in trials.values():
        rows = reports(trial)
        assert rows and {(r["gpu_ids"], r["device"]) for r in rows} == {("0", "cpu")}, rows[-1]
    assert "warning: the cluster has" not in cluster.job_logs(job_id)
