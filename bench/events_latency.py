"""Latency of real-time events in ``recsearch serve``: ``POST /events``, and ``/recommend/user``
for users with events, against plain ``/recommend/user`` in the same run and server.

``recsearch serve MODEL_DIR`` (HAProxy ingress, one replica of ``--num-cpus``) driven by ``wrk``
(a load generator in C) for ``--seconds`` per phase at each concurrency level. First with
``--no-events`` (no event store: what /recommend/user costs without the store's call), then as
served by default, in this order: plain ``/recommend/user`` for ten known users that never get
events; ``POST /events`` (one item per request) for ten other known users; ``/recommend/user``
for those ten, who now hold events (as many as the events phase left, up to the per-user limit);
the plain phase again, to see drift. Ratios are against the mean of the default server's two
plain phases at the same level. Load average before and after each phase is recorded (the
machine may be shared).
Writes bench/results/events_latency.{json,md}.

    python bench/events_latency.py runs/ease --levels 1 16 --seconds 6
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from record import machine, write_results
from serve_load import checked_wrk, run_wrk, wrk_arguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.ports import EXCLUSIVE_SERVE_PORTS, with_free_port  # noqa: E402
from helpers.serve_process import ServeProcess  # noqa: E402

from recsearch.models.base import Recommender  # noqa: E402
from recsearch.serving import ingress  # noqa: E402
from recsearch.serving.service import read_description, resolve_model_dir  # noqa: E402

WRK_SCRIPT = """-- POST %(path)s, cycling through users (and items)
local users = {%(users)s}
local items = {%(items)s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  n = n + 1
  local user = users[n %% #users + 1]
  return wrk.format(nil, "%(path)s", nil, %(body)s)
end
"""
BODIES = {
    "/recommend/user": """'{"user": "' .. user .. '", "k": %(k)d}'""",
    "/events": """'{"user": "' .. user .. '", "items": ["' .. items[n %% #items + 1] .. '"]}'""",
}


def parse_args() -> argparse.Namespace:
    return wrk_arguments(__doc__, [1, 16], 6, "wrk duration per phase and level", "bench/results/events_latency").parse_args()


def script(workdir: Path, name: str, path: str, users: list[str], items: list[str], k: int) -> Path:
    file = workdir / f"{name}.lua"
    file.write_text(WRK_SCRIPT % {"path": path, "users": lua_strings(users), "items": lua_strings(items),
                                  "body": BODIES[path] % {"k": k}})
    return file


def lua_strings(values: list[str]) -> str:
    return ", ".join(f'"{v}"' for v in values)


def measure(args: argparse.Namespace, directory: Path, workdir: Path, server_name: str, options: list[str],
            phases: list[tuple], scripts: dict[str, Path]) -> tuple[str, list[dict]]:
    """Serve with ``options`` and run every phase at every level: (the ingress line, rows)."""
    inherited = {k: v for k, v in os.environ.items() if k not in ingress.HAPROXY_PORTS}
    server = ServeProcess(directory, {**inherited, **EXCLUSIVE_SERVE_PORTS}, workdir / f"{server_name}.log",
                          "--num-cpus", str(args.num_cpus), *options)
    output = with_free_port(server.start)
    rows = []
    try:
        serving = re.search(r"^ingress: (.*)$", output, re.M).group(1).split(";")[0]
        url = f"http://127.0.0.1:{server.port}/"
        run_wrk(args.wrk, url, scripts[phases[0][0]], 4, 2)  # warm-up: connections, the first batches
        for level in args.levels:
            for name, _, _ in phases:
                load_before = os.getloadavg()[0]
                result = run_wrk(args.wrk, url, scripts[name], level, args.seconds)
                rows.append({"server": server_name, "phase": name, "connections": level, **result,
                             "load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]})
                print(f"{server_name:11s} c={level:3d} {name:30s} {result['qps']:7.1f} QPS  "
                      f"p50 {result.get('p50_ms', float('nan')):6.1f} ms  p99 {result.get('p99_ms', float('nan')):6.1f} ms"
                      f"  failed {result['failed']}", flush=True)
    finally:
        server.stop()
    return serving, rows


def main() -> None:
    args = parse_args()
    wrk_version = checked_wrk(args)
    directory = resolve_model_dir(args.model_dir)
    description = read_description(directory)
    data = Recommender.load(directory, device="cpu").serving_data
    plain_users, event_users = data.user_ids[:10].tolist(), data.user_ids[10:20].tolist()
    items = data.item_ids[:50].tolist()
    with tempfile.TemporaryDirectory(prefix="events-latency-") as workdir:
        workdir = Path(workdir)
        phases = [  # (phase, path, users)
            ("plain /recommend/user", "/recommend/user", plain_users),
            ("POST /events", "/events", event_users),
            ("/recommend/user with events", "/recommend/user", event_users),
            ("plain /recommend/user, again", "/recommend/user", plain_users),
        ]
        scripts = {name: script(workdir, f"phase{n}", path, users, items, args.k)
                   for n, (name, path, users) in enumerate(phases)}
        _, without_store = measure(args, directory, workdir, "--no-events", ["--no-events"], phases[:1], scripts)
        serving, default = measure(args, directory, workdir, "default", [], phases, scripts)
        rows = without_store + default
    for row in rows:
        plain = [r for r in rows if r["connections"] == row["connections"] and r["server"] == "default"
                 and r["phase"].startswith("plain")]
        for key in ("p50_ms", "qps"):
            reference = sum(r[key] for r in plain) / len(plain)
            row[f"{key.split('_')[0]}_vs_plain"] = row[key] / reference if reference else None
    write_results(args.out, rows,
                  ["server", "phase", "connections", "qps", "qps_vs_plain", "p50_ms", "p50_vs_plain", "p99_ms", "failed",
                   "load_1m_before", "load_1m_after"],
                  f"`recsearch serve` ({serving}) under wrk (-t1, {args.seconds} s per phase and level), one replica of "
                  f"{args.num_cpus:g} CPU, {description['family']} on {description.get('metadata', {}).get('data', '?')}; "
                  "ratios against the mean of the default server's two plain phases; client on the same machine",
                  host={**machine(), "wrk": wrk_version,
                        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()},
                  model={"path": str(directory), "family": description["family"]},
                  settings={"levels": args.levels, "seconds": args.seconds, "k": args.k, "replica_cpus": args.num_cpus})


if __name__ == "__main__":
    main()
