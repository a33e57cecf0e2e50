"""Load benchmark of ``recsearch serve``: Serve's default proxy against the HAProxy ingress, side
by side in one run.

For each ingress it starts ``recsearch serve MODEL_DIR`` as a user would (``--no-haproxy`` for
the default proxy), one replica of ``--num-cpus``, then drives ``POST /recommend/user`` with
``wrk`` (a load generator in C, so the client spends no Python per request on the cores the
server shares) cycling through ten known users, at each concurrency level for ``--seconds``
after a short warm-up. Reports QPS and p50/p99 latency per level, HAProxy's QPS as a multiple
of the default proxy's at the same level, and the load average around each measurement
(other work on the machine skews QPS). Writes bench/results/serve_load.{json,md}.

    python bench/serve_load.py runs/ease            # a train output, model or sweep directory
    python bench/serve_load.py runs/ease --levels 1 16 64 --seconds 8

Needs wrk (Debian/Ubuntu: ``apt-get install -y wrk``). With ``RECSEARCH_SERVE_TOKEN`` set, the
server requires it and wrk sends it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from record import machine, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.ports import EXCLUSIVE_SERVE_PORTS, with_free_port  # noqa: E402
from helpers.serve_process import ServeProcess  # noqa: E402

from recsearch.models.base import Recommender  # noqa: E402
from recsearch.serving import TOKEN_ENV, ingress  # noqa: E402
from recsearch.serving.service import read_description, resolve_model_dir  # noqa: E402

INGRESSES = {"default": ["--no-haproxy"], "haproxy": []}  # name -> recsearch serve options
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}  # wrk's latency units, in ms
WRK_SCRIPT = """-- POST /recommend/user, cycling through known users
local users = {%(users)s}
local n = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
request = function()
  n = n %% #users + 1
  return wrk.format(nil, nil, nil, '{"user": "' .. users[n] .. '", "k": %(k)d}')
end
"""


def wrk_arguments(doc: str, levels: list[int], seconds: int, seconds_help: str, out: str) -> argparse.ArgumentParser:
    """The options every wrk benchmark of a served model takes (this one, events_latency.py)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="model, sweep or `recsearch train` output directory")
    parser.add_argument("--levels", type=int, nargs="+", default=levels, help="concurrent connections")
    parser.add_argument("--seconds", type=int, default=seconds, help=seconds_help)
    parser.add_argument("--k", type=int, default=10, help="items per recommendation")
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs of the one replica")
    parser.add_argument("--wrk", default=shutil.which("wrk"), help="the wrk binary (default: wrk on PATH)")
    parser.add_argument("--out", default=out, help="results stem (.json and .md)")
    return parser


def checked_wrk(args: argparse.Namespace) -> str:
    """The wrk binary's version line; exits with how to get wrk when there is none."""
    if not args.wrk or not Path(args.wrk).is_file():
        sys.exit(f"bench/{Path(sys.argv[0]).name} needs wrk, a load generator in C: install it (Debian/Ubuntu: "
                 "apt-get install -y wrk) or pass --wrk PATH")
    return subprocess.run([args.wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]


def parse_args() -> argparse.Namespace:
    parser = wrk_arguments(__doc__, [1, 16, 64], 8, "wrk duration per level (default: 8, as wrk -d8s)",
                           "bench/results/serve_load")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before the first level")
    return parser.parse_args()


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int) -> dict:
    """One wrk run, one thread: QPS, latency percentiles (ms), failed requests."""
    done = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    text = done.stdout
    latency = {f"p{p}_ms": float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"qps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
            "requests": int(re.search(r"(\d+) requests in", text).group(1)), **latency,
            "failed": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)}


def measure(name: str, args: argparse.Namespace, directory: Path, script: Path, workdir: Path) -> list[dict]:
    """Serve with one ingress and load it at every level."""
    inherited = {k: v for k, v in os.environ.items() if k not in ingress.HAPROXY_PORTS}
    server = ServeProcess(directory, {**inherited, **EXCLUSIVE_SERVE_PORTS}, workdir / f"{name}.log",
                          "--num-cpus", str(args.num_cpus), *INGRESSES[name])
    output = with_free_port(server.start)
    rows = []
    try:
        serving = re.search(r"^ingress: (.*)$", output, re.M).group(1)
        if name == "haproxy" and not serving.startswith("HAProxy"):
            print(f"warning: HAProxy fell back to Serve's proxy: see {server.log}", file=sys.stderr)
        url = f"http://127.0.0.1:{server.port}/recommend/user"
        run_wrk(args.wrk, url, script, 4, args.warmup)  # connections, caches, the first batches
        for level in args.levels:
            load_before = os.getloadavg()[0]
            result = run_wrk(args.wrk, url, script, level, args.seconds)
            rows.append({"ingress": name, "serving": serving.split(";")[0], "connections": level, **result,
                         "load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]})
            print(f"{name:8s} c={level:3d}  {result['qps']:7.1f} QPS  p50 {result.get('p50_ms', float('nan')):7.1f} ms"
                  f"  p99 {result.get('p99_ms', float('nan')):7.1f} ms  failed {result['failed']}", flush=True)
    finally:
        server.stop()
    return rows


def main() -> None:
    args = parse_args()
    wrk_version = checked_wrk(args)
    directory = resolve_model_dir(args.model_dir)
    description = read_description(directory)
    users = Recommender.load(directory, device="cpu").serving_data.user_ids[:10].tolist()
    token = os.environ.get(TOKEN_ENV)
    with tempfile.TemporaryDirectory(prefix="serve-load-") as workdir:
        script = Path(workdir) / "recommend.lua"
        script.write_text(WRK_SCRIPT % {"users": ", ".join(f'"{u}"' for u in users), "k": args.k,
                                        "auth": f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""})
        rows = [row for name in INGRESSES for row in measure(name, args, directory, script, Path(workdir))]
    default = {row["connections"]: row["qps"] for row in rows if row["ingress"] == "default"}
    for row in rows:
        row["qps_vs_default"] = row["qps"] / default[row["connections"]] if default.get(row["connections"]) else None
    write_results(args.out, rows,
                  ["ingress", "connections", "qps", "qps_vs_default", "p50_ms", "p99_ms", "failed",
                   "load_1m_before", "load_1m_after"],
                  f"`recsearch serve` under wrk (-t1, POST /recommend/user, k={args.k}, ten known users, "
                  f"{args.seconds} s per level), one replica of {args.num_cpus:g} CPU, "
                  f"{description['family']} on {description.get('metadata', {}).get('data', '?')}, client on the same machine",
                  host={**machine(), "wrk": wrk_version},
                  model={"path": str(directory), "family": description["family"]},
                  settings={"levels": args.levels, "seconds": args.seconds, "k": args.k, "replica_cpus": args.num_cpus})


if __name__ == "__main__":
    main()
