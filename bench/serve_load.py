"""Load benchmark of the user-recommendation endpoint, with and without ``@serve.batch``.

Starts a private local Ray and Serve on 127.0.0.1, deploys MODEL_DIR once with batching
(``max_batch_size`` 32) and once without (1), and at each concurrency level runs that many
async clients (httpx, keep-alive) posting ``/recommend/user`` for random known users, back to
back, until ``--seconds`` pass or ``--max-requests`` are answered. Reports QPS, p50/p99 latency
and the mean batch size the server saw; writes JSON and prints a table.

    python bench/serve_load.py runs/pop-ml-100k/model
    python bench/serve_load.py runs/pop-ml-100k/model --levels 1 8 32 --seconds 5

Client and server share the machine: on a small one the client's own CPU use caps the QPS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from record import machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.ports import EXCLUSIVE_SERVE_PORTS, with_free_port  # noqa: E402

from recsearch.data.dataset import Dataset
from recsearch.output import format_table, write_json
from recsearch.serving.schemas import ServeSettings
from recsearch.serving.service import read_description, resolve_model_dir

MODES = {"batched": 32, "unbatched": 1}  # name -> max_batch_size


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="model directory or sweep directory (its best/)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64], help="concurrent clients per run")
    parser.add_argument("--seconds", type=float, default=5.0, help="time limit per level")
    parser.add_argument("--max-requests", type=int, default=5000, help="request limit per level")
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the one replica")
    parser.add_argument("--out", default="bench/results/serve_load.json", help="JSON results file")
    return parser.parse_args()


async def wait_until_serving(url: str, max_batch_size: int, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                health = (await client.get("/health")).json()
                if health.get("status") == "ok" and health["batching"]["max_batch_size"] == max_batch_size:
                    return health
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} did not come up within {timeout}s")


async def run_level(url: str, users: list[str], concurrency: int, seconds: float, max_requests: int,
                    k: int) -> dict:
    """``concurrency`` clients posting back to back; latency of every answered request."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient, rng: random.Random):
        nonlocal errors, issued
        while issued < max_requests and time.perf_counter() < deadline:
            issued += 1
            start = time.perf_counter()
            try:
                response = await client.post("/recommend/user", json={"user": rng.choice(users), "k": k})
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        before = (await client.get("/health")).json()["batching"]
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, random.Random(n)) for n in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = (await client.get("/health")).json()["batching"]
    batches = after["batches"] - before["batches"]
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "qps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
        "mean_batch": (after["requests"] - before["requests"]) / batches if batches else None,
    }


def main() -> None:
    args = parse_args()
    directory = resolve_model_dir(args.model_dir)
    description = read_description(directory)
    users = Dataset.load(directory / "data").user_ids.astype(str).tolist()

    import ray
    from ray import serve

    from recsearch.serving.app import build_app

    os.environ.update(EXCLUSIVE_SERVE_PORTS)  # a port another Serve listens on fails the start, not shared
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=200 * 2**20)
    rows = []

    def start_serve(port: int) -> str:
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
        except Exception:
            serve.shutdown()  # the controller outlives a proxy that could not bind
            raise
        return f"http://127.0.0.1:{port}"

    try:
        url = with_free_port(start_serve)  # a free port; another if it is taken before Serve binds it
        for mode, max_batch_size in MODES.items():
            settings = ServeSettings(model_dir=str(directory), max_batch_size=max_batch_size)
            serve.run(build_app(settings, num_cpus=args.num_cpus), name="bench", route_prefix="/")
            asyncio.run(wait_until_serving(url, max_batch_size))
            asyncio.run(run_level(url, users, 4, 1.0, 200, args.k))  # warm-up: connections, caches
            for level in args.levels:
                row = {"mode": mode, "max_batch_size": max_batch_size,
                       **asyncio.run(run_level(url, users, level, args.seconds, args.max_requests, args.k))}
                rows.append(row)
                print(format_table([row], list(row)).splitlines()[-1], flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    result = {
        "model": {"path": str(directory), "family": description["family"], "task": description.get("task"),
                  "n_users": description.get("n_users"), "n_items": description.get("n_items")},
        "machine": {**machine(), "load_average_1m_at_end": os.getloadavg()[0]},  # other work skews QPS
        "settings": {"levels": args.levels, "seconds": args.seconds, "max_requests": args.max_requests,
                     "k": args.k, "replica_cpus": args.num_cpus},
        "results": rows,
    }
    path = write_json(args.out, result)
    print()
    print(format_table(rows, ["mode", "concurrency", "requests", "errors", "qps", "p50_ms", "p99_ms", "mean_batch"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
