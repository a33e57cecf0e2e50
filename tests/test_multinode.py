"""Sweeps and serving on a real multi-node Ray cluster: a head and two worker nodes, separate
processes on loopback (tests/multinode.py), token authentication on. Everything reaches the
cluster the way a user's laptop would: ``recsearch submit`` / ``ray job submit`` through the
head's Jobs API, ``recsearch serve --address``, HTTP. This process never joins the cluster.

The nodes share this machine's disk, so a local folder stands in for the shared file system
(EFS, NFS) of cluster.yaml: Tune's storage_path and the sweep's out= live in it, the same code
path as on the cluster. Faults:
  * the driver is killed: `recsearch resume` finishes the sweep without re-running finished trials;
  * a worker node crashes mid-sweep: its trial resumes from its last checkpoint on the other node
    (the same sweep shows where trials run and where results land: observed once, checked twice);
  * a Serve replica is killed: the application recovers, and we count the failed requests.
Tests that crash a node come after those that need both; a test that finds one missing starts
a replacement.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from multinode import BIN, LoopbackCluster, free_port

from recsearch.models.base import Recommender
from recsearch.models.pop import Popularity

pytestmark = pytest.mark.ray

# A small synthetic dataset and a fast MF (epochs of 0.1-0.5 s), so that a whole sweep stays
# under a minute; the crashed sweep runs enough epochs for the crash to land mid-trial.
SMALL_MF = [
    "model=mf", "model.batch_size=256", "search.space.dim={choice:[8,16]}",
    "~search.space.negatives", "data.source.n_users=1000", "data.source.n_items=500",
    "data.source.n_interactions=30000", "ray.max_failures=3",
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LoopbackCluster(tmp_path_factory.mktemp("cluster"), workers=2) as cluster:
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
                          "--python", sys.executable, *overrides], timeout=120)
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


@pytest.fixture
def served_model(cluster, planted_split):
    """A model on the shared disk, served by two replicas of half a CPU each: they fit whether
    one worker node is left or two. The cluster's teardown removes the application."""
    model_dir = shared(cluster) / "models" / "pop"
    Popularity(seed=0, device="cpu").fit(planted_split.train).save(model_dir)
    port = free_port()
    result = cluster.run([str(BIN / "recsearch"), "serve", str(model_dir), "--address", cluster.address,
                          "--port", str(port), "--replicas", "2", "--num-cpus", "0.5"], timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cluster, f"http://127.0.0.1:{port}"


def replicas(cluster: LoopbackCluster) -> list[dict]:
    """The Recommender deployment's replicas as Serve's controller reports them."""
    response = httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", headers=cluster.headers, timeout=10)
    response.raise_for_status()
    app = response.json()["applications"].get("recsearch", {})
    return app.get("deployments", {}).get("Recommender", {}).get("replicas", [])


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
