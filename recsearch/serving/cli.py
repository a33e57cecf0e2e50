"""``recsearch serve DIR``: serve a model directory over HTTP with Ray Serve.

Everything the user can get wrong (the directory, the port, the flags) is checked before Ray
starts. With ``--address local`` (the default) it starts a private Ray behind Ray's HAProxy
ingress (``ingress.py``; Serve's own proxy with ``--no-haproxy``, or when HAProxy cannot start),
serves until Ctrl-C or SIGTERM, shuts everything down and returns once the port is free again;
with ``--address auto`` (or host:port) it deploys onto a running cluster, whose ingress was
chosen when its nodes started, and returns, leaving the application there.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsearch.errors import ConfigError, RecsearchError
from recsearch.serving import (
    DEFAULT_BATCH_WAIT_S,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_EVENT_USERS,
    DEFAULT_MAX_EVENTS_PER_USER,
    TOKEN_ENV,
    ingress,
)

if TYPE_CHECKING:  # imported lazily below: pydantic would slow down every recsearch command
    from recsearch.serving.events import EventLimits
    from recsearch.serving.schemas import ServeSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="DIR",
                        help="model directory (recsearch train's <out>/model) or sweep directory (its best/ is used)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas (the minimum when autoscaling)")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscale between --replicas and this")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica (default: 1)")
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (default: 0)")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        help=f"requests answered by one forward pass; 1 disables batching (default: {DEFAULT_MAX_BATCH_SIZE})")
    parser.add_argument("--batch-wait-ms", type=float, default=DEFAULT_BATCH_WAIT_S * 1000,
                        help="how long a request waits for others to batch with (default: %(default)s)")
    parser.add_argument("--events-max-users", type=int, default=DEFAULT_MAX_EVENT_USERS,
                        help="users whose recent events (POST /events) are held; the least recently active "
                             "are forgotten first (default: %(default)s)")
    parser.add_argument("--events-max-per-user", type=int, default=DEFAULT_MAX_EVENTS_PER_USER,
                        help="newest events held per user (default: %(default)s)")
    parser.add_argument("--no-events", dest="events", action="store_false",
                        help="no real-time events: no event store, POST /events answers 409, and /recommend/user "
                             "saves its call to the store")
    parser.add_argument("--address", default="local",
                        help="Ray cluster: 'local' starts a private one (default), 'auto' or HOST:PORT joins one")
    parser.add_argument("--name", default="recsearch", help="Serve application name (default: recsearch)")
    parser.add_argument("--no-haproxy", dest="haproxy", action="store_false",
                        help="local Ray: Serve's own proxy instead of the HAProxy ingress (a cluster's ingress "
                             "is chosen where its nodes start, see cluster.yaml)")


@dataclass
class ServePlan:
    settings: ServeSettings
    replicas: int
    max_replicas: int | None
    num_cpus: float
    num_gpus: float
    event_limits: EventLimits | None  # None: no real-time events


def plan(args: argparse.Namespace) -> ServePlan:
    """Validate the command line into what will be deployed; raises ConfigError."""
    from pydantic import ValidationError

    from recsearch.serving.events import EventLimits
    from recsearch.serving.schemas import ServeSettings
    from recsearch.serving.service import read_description, resolve_model_dir

    directory = resolve_model_dir(args.model_dir)
    read_description(directory)
    try:
        settings = ServeSettings(model_dir=str(directory), max_batch_size=args.max_batch_size,
                                 batch_wait_timeout_s=args.batch_wait_ms / 1000)
        event_limits = EventLimits(max_users=args.events_max_users, max_events_per_user=args.events_max_per_user)
    except ValidationError as err:
        problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"bad serving option: {problems}") from None
    if args.replicas < 1:
        raise ConfigError(f"--replicas must be >= 1, got {args.replicas}")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ConfigError(f"--max-replicas ({args.max_replicas}) must be >= --replicas ({args.replicas})")
    if args.num_cpus < 0 or args.num_gpus < 0:
        raise ConfigError("--num-cpus and --num-gpus must be >= 0")
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {args.port}")
    if not args.haproxy and args.address != "local":
        raise ConfigError("--no-haproxy applies to the private local Ray: a cluster's ingress is chosen when "
                          "its nodes start (RAY_SERVE_ENABLE_HA_PROXY for `ray start`, see cluster.yaml)")
    return ServePlan(settings, args.replicas, args.max_replicas, args.num_cpus, args.num_gpus,
                     event_limits if args.events else None)


def check_port_free(host: str, port: int) -> None:
    if not _port_free(host, port):
        raise ConfigError(f"cannot listen on {host}:{port}: address already in use; choose another --port")


def _port_free(host: str, port: int) -> bool:
    """Whether a server could bind ``host:port`` now. With SO_REUSEADDR, as servers bind: a
    connection of a stopped server still in TIME_WAIT does not hold the port."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.1, ::1, localhost)."""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
        return False


class IngressFailed(RecsearchError):
    """The HAProxy ingress did not start."""


def serve_command(args: argparse.Namespace) -> None:
    target = plan(args)
    local = args.address == "local"
    if local:
        check_port_free(args.host, args.port)
    token = os.environ.get(TOKEN_ENV)
    if not token and not is_loopback(args.host):
        print(f"recsearch: warning: listening on {args.host} without a token: anyone who can reach port "
              f"{args.port} can query the model; export {TOKEN_ENV} to require one", file=sys.stderr, flush=True)
    url = f"http://{args.host}:{args.port}"
    if not local:
        _start(args, target, token)
        print(f"serving {target.settings.model_dir} at {url}/ (API docs: {url}/docs)"
              f"{'; bearer token required' if token else ''}\n"
              f"application {args.name!r} runs on the cluster; remove it with `serve delete {args.name}`", flush=True)
        if is_loopback(args.host):
            print("note: behind the HAProxy ingress (cluster.yaml starts it), replicas on other nodes are reached "
                  "at --host: there, serve with --host 0.0.0.0 and a token", flush=True)
        return
    environment = ingress.haproxy_environment() if args.haproxy else ingress.default_environment()
    try:  # Ctrl-C or SIGTERM at any point, even while starting, stops everything started
        try:
            _start(args, target, token, environment)
        except IngressFailed as err:
            print(f"recsearch: HAProxy did not start ({err}); falling back to Serve's default proxy, which "
                  "answers fewer requests per second (--no-haproxy skips the attempt)", file=sys.stderr, flush=True)
            environment = ingress.default_environment()
            _start(args, target, token, environment)
        haproxy = environment.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"
        side = "".join(f"; {what} on port {environment[name]}" for name, what in ingress.HAPROXY_PORTS.items()) if haproxy else ""
        print(f"serving {target.settings.model_dir} at {url}/ (API docs: {url}/docs)"
              f"{'; bearer token required' if token else ''}\n"
              f"ingress: {'HAProxy, throughput-optimised' if haproxy else 'Serve proxy'}{side}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        _stop(args.host, args.port)


def _start(args: argparse.Namespace, target: ServePlan, token: str | None,
           environment: dict[str, str | None] | None = None) -> None:
    """Start Ray (a private one when ``environment`` is given, in that environment) and Serve,
    and deploy; on failure everything started is stopped again. HAProxy, when asked for, starts
    with Serve: its failure then is an ``IngressFailed``."""
    import ray
    from ray import serve

    from recsearch.serving.app import build_app

    if environment is not None:
        ingress.apply(environment)
    # Passed explicitly: replicas on a joined cluster do not inherit this shell's environment.
    env_vars = {TOKEN_ENV: token} if token else None
    ray.init(address=args.address)
    if environment is not None:
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` shuts down as cleanly as Ctrl-C
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
    except Exception as err:
        if environment is not None:
            _stop(args.host, args.port)
        if environment and environment.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
            raise IngressFailed(_last_line(err)) from None
        raise RecsearchError(f"Serve did not start: {err}") from None
    try:
        serve.run(build_app(target.settings, replicas=target.replicas, max_replicas=target.max_replicas,
                            num_cpus=target.num_cpus, num_gpus=target.num_gpus, env_vars=env_vars,
                            events=target.event_limits is not None, event_limits=target.event_limits),
                  name=args.name, route_prefix="/")
    except Exception as err:
        if environment is not None:
            _stop(args.host, args.port)
        raise RecsearchError(f"the deployment failed: {err}") from None


def _stop(host: str, port: int, timeout: float = 30.0) -> None:
    """Stop the private Ray (every process of it, the application with it, HAProxy even where a
    signal to the whole process group killed Ray first: ``ingress.stop_orphans``) and wait until
    the port can be bound again, so that a new ``recsearch serve`` can start on it at once."""
    import ray

    node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    ray.shutdown()
    if node_id is not None:
        ingress.stop_orphans(node_id)
    deadline = time.monotonic() + timeout
    while not _port_free(host, port) and time.monotonic() < deadline:
        time.sleep(0.2)


def _last_line(error: BaseException) -> str:
    """The gist of an error that may carry a remote traceback: its last non-empty line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
