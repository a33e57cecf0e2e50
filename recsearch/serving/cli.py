"""``recsearch serve DIR``: serve a model directory over HTTP with Ray Serve.

Everything the user can get wrong (the directory, the port, the flags) is checked before Ray
starts. With ``--address local`` (the default) it starts a private Ray, serves until Ctrl-C and
shuts everything down; with ``--address auto`` (or host:port) it deploys onto a running cluster
and returns, leaving the application there.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsearch.errors import ConfigError, RecsearchError
from recsearch.serving import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_SIZE, TOKEN_ENV

if TYPE_CHECKING:  # imported lazily below: pydantic would slow down every recsearch command
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
    parser.add_argument("--address", default="local",
                        help="Ray cluster: 'local' starts a private one (default), 'auto' or HOST:PORT joins one")
    parser.add_argument("--name", default="recsearch", help="Serve application name (default: recsearch)")


@dataclass
class ServePlan:
    settings: ServeSettings
    replicas: int
    max_replicas: int | None
    num_cpus: float
    num_gpus: float


def plan(args: argparse.Namespace) -> ServePlan:
    """Validate the command line into what will be deployed; raises ConfigError."""
    from pydantic import ValidationError

    from recsearch.serving.schemas import ServeSettings
    from recsearch.serving.service import read_description, resolve_model_dir

    directory = resolve_model_dir(args.model_dir)
    read_description(directory)
    try:
        settings = ServeSettings(model_dir=str(directory), max_batch_size=args.max_batch_size,
                                 batch_wait_timeout_s=args.batch_wait_ms / 1000)
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
    return ServePlan(settings, args.replicas, args.max_replicas, args.num_cpus, args.num_gpus)


def check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}; choose another --port") from None


def serve_command(args: argparse.Namespace) -> None:
    target = plan(args)
    local = args.address == "local"
    if local:
        check_port_free(args.host, args.port)

    import ray
    from ray import serve

    from recsearch.serving.app import build_app

    token = os.environ.get(TOKEN_ENV)
    # Passed explicitly: replicas on a joined cluster do not inherit this shell's environment.
    env_vars = {TOKEN_ENV: token} if token else None
    ray.init(address=args.address)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(target.settings, replicas=target.replicas, max_replicas=target.max_replicas,
                            num_cpus=target.num_cpus, num_gpus=target.num_gpus, env_vars=env_vars),
                  name=args.name, route_prefix="/")
    except Exception as err:
        if local:
            ray.shutdown()
        raise RecsearchError(f"the deployment failed: {err}") from None
    url = f"http://{args.host}:{args.port}"
    print(f"serving {target.settings.model_dir} at {url}/ (API docs: {url}/docs)"
          f"{'; bearer token required' if token else ''}", flush=True)
    if not local:
        print(f"application {args.name!r} runs on the cluster; remove it with `serve delete {args.name}`")
        return
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` shuts down as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
