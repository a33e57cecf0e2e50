"""A real multi-node Ray cluster on loopback, for tests: one head and N worker nodes, each its
own ``ray start --block`` process with its own temp dir, token authentication on.

Every node binds its ports itself (``--port=0``, ``--dashboard-port=0`` and 0 for the raylet's
and agents' ports), so another Ray or test run on the machine can never take them between a
pick and a bind; the cluster then reads the GCS address from the head's ``ray_current_cluster``
file and the dashboard's from the head's start-up output. The one port Ray does not let a node
choose itself is the head's Ray Client server port: it is picked here, and the cluster starts
again on another if that one was taken before the head bound it (``ports.with_free_port``).

The head gets no CPUs, so everything that asks for a CPU (Tune trials, Serve replicas) runs on
the worker nodes, as on a cluster whose head only coordinates. Every process started here, and
every process those start (raylets, Ray workers, job drivers), carries a marker in its
environment; ``stop()`` ends exactly those, by pid, and never touches another Ray on the machine.

Nothing here reads ``~/.ray``: the token lives in the cluster's own folder and every process
gets ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN_PATH`` explicitly.

Like the nodes of cluster.yaml, the nodes find recsearch on their PATH (this virtual environment's
``bin/``). On one machine every process sees every file, where a laptop's files are invisible to
a real cluster: with ``hidden=[folder, ...]`` the nodes, and everything they start, run in their
own mount namespace (``unshare``) in which an empty file system covers each of those folders
(``hiding_works()`` says whether this machine allows it).

Each node's metrics agent exports Ray's and recsearch's metrics in Prometheus text format, at the
addresses the head lists for Prometheus in its service-discovery file; ``scrape()`` reads them
all, as Prometheus would. Processes report to their agent every second here (Ray's default: 10 s).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from helpers.ports import PortTaken, is_port_conflict, with_free_port

BIN = Path(sys.executable).parent
MARKER = "RECSEARCH_LOOPBACK_CLUSTER"  # environment variable naming the cluster a process belongs to
HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>
# Ports each node binds itself (0 = the OS picks one). Without them a node would take Ray's fixed
# defaults (the dashboard agent's 52365), which two nodes on one machine cannot share.
SELF_BOUND_PORTS = [
    "--node-manager-port=0", "--object-manager-port=0", "--metrics-export-port=0",
    "--runtime-env-agent-port=0", "--dashboard-agent-listen-port=0", "--dashboard-agent-grpc-port=0",
]
# Ray's settings for the whole cluster (the head hands them to every node and process): metrics
# reach the agents every second instead of every 10 s, so tests wait less for them.
SYSTEM_CONFIG = {"metrics_report_interval_ms": 1000}
# `ray start --head` prints the dashboard's address, the one it bound, as RAY_API_SERVER_ADDRESS='http://HOST:PORT'
DASHBOARD_LINE = re.compile(r"RAY_API_SERVER_ADDRESS='http://([^':]+):(\d+)'")


@dataclass
class Node:
    """One ``ray start --block`` process: the node's parent, which ends its node's processes
    when it gets SIGTERM or when one of them dies."""

    name: str
    process: subprocess.Popen
    temp_dir: Path
    crashed: bool = False  # killed on purpose by kill_node
    node_id: str | None = None  # Ray's id of the node (as in the State API), once it has started

    def raylet(self) -> int | None:
        """Pid of the node's raylet, the process whose death is a node failure."""
        return next((pid for pid in _pids() if _read(pid, "comm").strip() == "raylet"
                     and str(self.temp_dir) in _read(pid, "cmdline")), None)

    def read_node_id(self) -> None:
        """Remember the node's id, from its raylet's command line (kept after a crash)."""
        raylet = self.raylet()
        arguments = _read(raylet, "cmdline").split() if raylet else []
        self.node_id = next((a.split("=", 1)[1] for a in arguments if a.startswith("--node_id=")), self.node_id)


class LoopbackCluster:
    """``with LoopbackCluster(root, workers=2) as cluster:`` starts the nodes and always stops
    them. ``root`` holds the token, the node logs and whatever the tests share between nodes."""

    def __init__(self, root: Path, workers: int = 2, cpus_per_worker: int = 1,
                 object_store_mb: int = 150, hidden: Sequence[Path] = ()):
        self.root = Path(root)
        self.hidden = [Path(folder) for folder in hidden]
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker
        self.object_store_bytes = object_store_mb * 2**20
        self.id = secrets.token_hex(6)
        # Ray's unix socket paths must stay short: temp dirs under /tmp, not under pytest's tmp_path.
        self.temp_root = Path(tempfile.mkdtemp(prefix=f"rs-{self.id}-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.gcs_port: int | None = None  # bound by the head: known once it has started
        self.dashboard_port: int | None = None
        self.nodes: list[Node] = []
        self.start_seconds = 0.0

    # -- addresses and environment ----------------------------------------------------------
    @property
    def address(self) -> str:
        """The GCS address that ``ray start --address`` and ``ray.init(address=...)`` take."""
        if self.gcs_port is None:
            raise RuntimeError("the cluster has not started")
        return f"{HOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and Job API: what ``ray job submit --address`` takes."""
        if self.dashboard_port is None:
            raise RuntimeError("the cluster has not started")
        return f"http://{HOST}:{self.dashboard_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for any process talking to this cluster (CLI clients and drivers)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({
            MARKER: self.id,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `recsearch` and `ray`, as on cluster.yaml's nodes
        })
        env.update(extra)
        return env

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        begin = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in self.hidden:  # mount points must exist
            folder.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        with_free_port(self._start_nodes)
        self.start_seconds = time.perf_counter() - begin

    def _start_nodes(self, client_server_port: int) -> None:
        """Start the head, with its Ray Client server on ``client_server_port``, then the
        workers. A head whose Ray Client server found that port taken exits a few seconds after
        it started, while the workers join: then this attempt's nodes are stopped and PortTaken
        raised, for ``with_free_port`` to start the cluster again on another port."""
        try:
            # Ray checks the Ray Client port to be >= 1024: the head cannot bind it itself.
            head = self._start_node("head", [
                "--head", "--port=0", "--num-cpus=0", "--dashboard-host=127.0.0.1", "--dashboard-port=0",
                f"--ray-client-server-port={client_server_port}", f"--system-config={json.dumps(SYSTEM_CONFIG)}",
            ])
            self._read_head_ports(head)
            self._wait_for_dashboard(head)
            self.wait_for_nodes(1)  # workers joining before the head node registered give up
            for _ in range(self.workers):
                self.add_worker(wait=False)
            self.wait_for_nodes(1 + self.workers)
        except Exception as error:
            head_log = self.root / "head.log"
            if not (head_log.is_file() and is_port_conflict(head_log.read_text(errors="replace"))):
                raise
            self._stop_nodes()
            (self.root / "head.log").replace(self.root / f"head-port-{client_server_port}-taken.log")
            raise PortTaken(f"the head's Ray Client port {client_server_port} was taken") from error

    def _read_head_ports(self, head: Node, timeout: float = 120) -> None:
        """The GCS and dashboard ports the head bound, once it has started: the GCS address
        from the ``ray_current_cluster`` file ``ray start`` writes last, the dashboard from its
        output."""
        address_file = head.temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if head.process.poll() is not None:
                raise RuntimeError(f"the head node exited: see {self.root / 'head.log'}")
            address = address_file.read_text().strip() if address_file.is_file() else ""
            printed = DASHBOARD_LINE.search((self.root / "head.log").read_text(errors="replace"))
            if address and printed:
                self.gcs_port = int(address.rsplit(":", 1)[1])
                self.dashboard_port = int(printed.group(2))
                return
            time.sleep(0.2)
        raise TimeoutError(f"the head node did not report its GCS and dashboard addresses within {timeout}s: "
                           f"see {self.root / 'head.log'}")

    def add_worker(self, *extra: str, wait: bool = True) -> Node:
        """Start one more worker node (``extra``: more ``ray start`` options, e.g.
        ``--num-gpus=1``); with ``wait``, return once the cluster sees it alive."""
        index = len([n for n in self.nodes if n.name.startswith("worker")]) + 1
        node = self._start_node(f"worker{index}", [
            f"--address={self.address}", f"--num-cpus={self.cpus_per_worker}",
            '--resources={"worker": 1}', *extra,
        ])
        if wait:
            self.wait_for_nodes(len(self.alive_nodes()) + 1)
        return node

    def _start_node(self, name: str, args: list[str]) -> Node:
        temp_dir = self.temp_root / name
        command = [
            str(BIN / "ray"), "start", "--block", *args,
            f"--temp-dir={temp_dir}", f"--node-ip-address={HOST}",
            f"--object-store-memory={self.object_store_bytes}", *SELF_BOUND_PORTS,
            "--disable-usage-stats",
        ]
        if self.hidden:
            command = [*hiding(self.hidden), *command]
        # A node on a busy machine (the test suite shares two cores) can take longer than
        # Ray's default 30 s to register.
        env = self.env(RAY_raylet_start_wait_time_s="180")
        with (self.root / f"{name}.log").open("w") as log:
            # A new session: a Ctrl-C in the test runner must not reach the nodes before stop() does.
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_end_with_parent)
        node = Node(name, process, temp_dir)
        self.nodes.append(node)
        return node

    def _wait_for_dashboard(self, head: Node, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if head.process.poll() is not None:
                raise RuntimeError(f"the head node exited: see {self.root / 'head.log'}")
            try:
                if httpx.get(f"{self.dashboard_url}/api/version", headers=self.headers, timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the dashboard did not answer within {timeout}s: see {self.root / 'head.log'}")

    def alive_nodes(self) -> list[dict]:
        """The nodes the cluster itself reports ALIVE (the State API over HTTP)."""
        response = httpx.get(f"{self.dashboard_url}/api/v0/nodes", headers=self.headers,
                             params={"limit": 100, "detail": "1"}, timeout=10)
        response.raise_for_status()
        return [n for n in response.json()["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def wait_for_nodes(self, count: int, timeout: float = 120) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes:
                if not node.crashed and node.process.poll() is not None:
                    raise RuntimeError(f"node {node.name} exited: see {self.root / (node.name + '.log')}")
            alive = self.alive_nodes()
            if len(alive) == count:
                for node in self.nodes:
                    if node.node_id is None:
                        node.read_node_id()
                return alive
            time.sleep(0.5)
        raise TimeoutError(f"{count} nodes were not alive within {timeout}s")

    def kill_node(self, node: Node) -> None:
        """Crash a worker node: SIGKILL its raylet, as when a machine or a spot instance
        disappears. The ``ray start --block`` parent then ends the node's other processes."""
        raylet = node.raylet()
        if raylet is None:
            raise RuntimeError(f"node {node.name} has no raylet")
        node.crashed = True
        os.kill(raylet, signal.SIGKILL)
        node.process.wait(timeout=60)

    def stop(self) -> None:
        """End every process of this cluster, and only those; then remove the temp dirs. The
        nodes get SIGTERM and a few seconds, not the half minute a node would spend draining
        its Serve replicas: nothing here needs a graceful end."""
        self._stop_nodes()
        shutil.rmtree(self.temp_root, ignore_errors=True)

    def _stop_nodes(self) -> None:
        for node in reversed(self.nodes):
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(n.process.poll() is None for n in self.nodes):
            time.sleep(0.2)
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()
        for pid in self.processes():
            _kill(pid)
        for node in self.nodes:
            shutil.rmtree(node.temp_dir, ignore_errors=True)
        self.nodes = []

    def processes(self) -> list[int]:
        """Pids of live processes carrying this cluster's marker (started here or by its nodes)."""
        marker = f"{MARKER}={self.id}".encode()
        return [pid for pid in _pids() if pid != os.getpid() and marker in _read(pid, "environ", binary=True).split(b"\0")]

    # -- clients ----------------------------------------------------------------------------
    def run(self, args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """Run a command (e.g. ``ray job submit ...``) as a client of this cluster."""
        return subprocess.run(args, env=self.env(**env), capture_output=True, text=True, timeout=timeout)

    def serve(self, model_dir: Path | str, *options: str, timeout: float = 600) -> str:
        """``recsearch serve MODEL_DIR --address <this cluster> --port P OPTIONS...``, as a user
        would deploy onto the cluster; returns the URL it serves at. P is picked free; when
        Serve's proxy finds it taken all the same, the half-started Serve instance is shut down
        and the deployment tried again on another port."""
        def deploy(port: int) -> str:
            done = self.run([str(BIN / "recsearch"), "serve", str(model_dir), "--address", self.address,
                             "--port", str(port), *options], timeout=timeout)
            output = done.stdout[-3000:] + done.stderr[-3000:]
            if done.returncode == 0:
                return f"http://{HOST}:{port}"
            if is_port_conflict(output):
                # Serve's controller outlives the failed start and would keep the taken port
                self.run([str(BIN / "serve"), "shutdown", "-y", "--address", self.dashboard_url], timeout=120)
                raise PortTaken(output)
            raise RuntimeError(f"recsearch serve failed:\n{output}")

        return with_free_port(deploy)

    def job_status(self, job_id: str) -> dict:
        response = httpx.get(f"{self.dashboard_url}/api/jobs/{job_id}", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()

    def job_logs(self, job_id: str) -> str:
        response = httpx.get(f"{self.dashboard_url}/api/jobs/{job_id}/logs", headers=self.headers, timeout=10)
        response.raise_for_status()
        return response.json()["logs"]

    def scrape(self, prefix: str = "ray_recsearch_") -> Samples:
        """The samples of every series named ``prefix...`` that the nodes' metrics agents export
        now. The targets are those the head lists for Prometheus; an agent that does not answer
        (its node just crashed) is skipped."""
        listed = next(n.temp_dir for n in self.nodes if n.name == "head") / "prom_metrics_service_discovery.json"
        targets = [t for group in json.loads(listed.read_text()) for t in group["targets"]]
        samples: Samples = {}
        for target in targets:
            try:
                text = httpx.get(f"http://{target}/metrics", timeout=10).text
            except httpx.HTTPError:
                continue
            ours = "\n".join(line for line in text.splitlines() if prefix in line)  # Ray's own: thousands of lines
            for family in text_string_to_metric_families(ours + "\n"):
                for sample in family.samples:
                    samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return samples

    def actors(self, **filters: str) -> list[dict]:
        """Actors (alive and recently dead) from the State API, e.g. ``state="ALIVE"``."""
        params = [("limit", "1000"), ("detail", "1")]
        for key, value in filters.items():
            params += [("filter_keys", key), ("filter_predicates", "="), ("filter_values", value)]
        response = httpx.get(f"{self.dashboard_url}/api/v0/actors", headers=self.headers, params=params, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]["result"]


Samples = dict[tuple[str, frozenset], float]  # (series name, its labels) -> value


def select(samples: Samples, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of the samples of series ``name`` whose labels include ``labels``."""
    return [(dict(tags), value) for (series, tags), value in samples.items()
            if series == name and labels.items() <= dict(tags).items()]


def total_by(samples: Samples, name: str, by: str | tuple[str, ...], **labels: str) -> dict:
    """The values of series ``name`` summed (over processes, nodes...) by one label, or by a
    tuple of labels."""
    totals: dict = {}
    for tags, value in select(samples, name, **labels):
        key = tags[by] if isinstance(by, str) else tuple(tags[b] for b in by)
        totals[key] = totals.get(key, 0.0) + value
    return totals


class MetricsWatch:
    """``with MetricsWatch(cluster) as watch:`` scrapes the cluster every ``interval`` seconds
    in a thread, keeping the latest value of every series seen: a gauge is gone from the agents
    seconds after its process ends, a sweep's trials with it."""

    def __init__(self, cluster: LoopbackCluster, interval: float = 0.5):
        self.cluster, self.interval = cluster, interval
        self.samples: Samples = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> MetricsWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.samples.update(self.cluster.scrape())

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.update(self.cluster.scrape())


@dataclass
class Laptop:
    """A submitting machine's environment: its own checkout of recsearch (package and conf/,
    copied from ``source``) and its own virtual environment, whose interpreter lives in
    ``home``. To save a 1-minute install of torch and Ray, the environment borrows this one's
    packages (a .pth file), after its own checkout: it imports recsearch from its checkout.
    Put ``home`` in a cluster's ``hidden`` folders and none of it exists for the cluster."""

    home: Path
    checkout: Path
    python: Path

    @classmethod
    def create(cls, home: Path, source: Path) -> Laptop:
        checkout, venv = home / "checkout", home / "venv"
        for part in ("recsearch", "conf"):
            shutil.copytree(source / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site_packages = next(venv.glob("lib/python3*/site-packages"))
        borrowed = next(BIN.parent.glob("lib/python3*/site-packages"))
        (site_packages / "laptop.pth").write_text(f"{checkout}\nimport site; site.addsitedir({str(borrowed)!r})\n")
        return cls(home, checkout, venv / "bin" / "python")

    def run(self, cluster: LoopbackCluster, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
        """``python -m recsearch ARGS`` from the checkout, with the laptop's PATH, as a user would."""
        env = cluster.env(PATH=f"{self.python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
        return subprocess.run([str(self.python), "-m", "recsearch", *args], cwd=self.checkout, env=env,
                              capture_output=True, text=True, timeout=timeout)


def hiding(folders: Sequence[Path]) -> list[str]:
    """A command prefix: run the command in a new mount namespace with an empty read-only tmpfs
    over each folder (as root, or as a user mapped to root in a new user namespace)."""
    mounts = " && ".join(f"mount -t tmpfs -o ro,size=4k hidden {shlex.quote(str(f))}" for f in folders)
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", "--mount", *user, "sh", "-c", f'{mounts} && exec "$@"', "sh"]


def hiding_works() -> bool:
    with tempfile.TemporaryDirectory() as folder:
        try:
            return subprocess.run([*hiding([Path(folder)]), "test", "!", "-w", folder],
                                  capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False


def _end_with_parent() -> None:
    """In the child before exec: get SIGTERM when the test process dies, even by SIGKILL, so a
    node never outlives the test run (``ray start --block`` ends its node's processes on SIGTERM)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


# Linux /proc, read directly: a process may vanish between listing and reading.
def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _read(pid: int, what: str, binary: bool = False):
    try:
        data = Path(f"/proc/{pid}/{what}").read_bytes()
    except OSError:
        data = b""
    return data if binary else data.replace(b"\0", b" ").decode(errors="replace")


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
