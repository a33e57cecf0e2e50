"""Ports for the servers that tests and benchmarks start on this machine, which other test runs
share: never a fixed port, and never a port picked here and then handed to a server as if it
were still free when the server binds it.

* Wherever the server binds port 0 itself and reports the port it got, ask it for port 0: Ray's
  GCS, dashboard, raylets and agents do (``ray start --port=0 --dashboard-port=0 ...``, see
  ``multinode.py``; ``ray.init(dashboard_port=0)`` reports the dashboard in
  ``RayContext.dashboard_url``).
* Ray Serve's HTTP proxy binds the port it is given and reports nothing back (port 0 would leave
  the client not knowing where to connect), and ``recsearch serve --port`` takes a real port.
  For those, ``with_free_port(start)`` calls ``start(port)`` with a port that is free at that
  moment and, if another process took it before the server bound it (the server fails with
  "Address already in use" or Serve's "Failed to bind to address"), calls it again with
  another port.

Serve's proxy sets SO_REUSEPORT by default, so its bind succeeds even where another Serve proxy
of the same user already listens, and the kernel then splits connections between the two
servers. ``EXCLUSIVE_SERVE_PORTS`` turns that off: give it to the process that starts Ray when
the Serve instance has a single proxy (several proxies on one machine need to share the port).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

HOST = "127.0.0.1"
# What a server says when its port is taken: the OS's EADDRINUSE text, Serve's proxy, Ray's dashboard.
CONFLICT_MESSAGES = ("address already in use", "failed to bind to address", "because it's already occupied")
EXCLUSIVE_SERVE_PORTS = {"SERVE_SOCKET_REUSE_PORT_ENABLED": "0"}


class PortTaken(RuntimeError):
    """Raised by a ``start`` function when its server could not bind the port it was given."""


def is_port_conflict(error: BaseException | str) -> bool:
    """Whether an exception (or a server's output) says that the port was already in use."""
    if isinstance(error, PortTaken):
        return True
    text = str(error).lower()
    return any(message in text for message in CONFLICT_MESSAGES)


def with_free_port(start: Callable[[int], T], attempts: int = 5, host: str = HOST) -> T:
    """``start(port)`` with a port free at the time of the call; again with another port, up to
    ``attempts`` times in all, while it fails because the port was taken meanwhile. ``start``
    must clean up after a failed attempt (a half-started server) before it raises."""
    for attempt in range(1, attempts + 1):
        try:
            return start(_unused_port(host))
        except Exception as error:
            if attempt == attempts or not is_port_conflict(error):
                raise
    raise AssertionError("unreachable")


def _unused_port(host: str) -> int:
    """A port nothing is bound to right now (it may be taken by the time it is used)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]
