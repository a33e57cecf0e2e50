"""The README's cluster walk-through, run for real on a multi-node Ray cluster on loopback, with
the time each step takes -> bench/results/cluster_walkthrough.{json,md}.

    python bench/cluster_walkthrough.py [--samples 8]

The cluster is tests/helpers/multinode.py's: a head with no CPUs and two one-CPU worker nodes,
each its own ``ray start`` process, token authentication on. ``ray up`` / ``ray down`` are
replaced by starting and stopping those nodes (the cloud steps cannot run here); every other step
is the command the README gives, run as a client of that cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from record import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.multinode import BIN, LoopbackCluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="trials of the MF sweep on ml-100k")
    args = parser.parse_args()
    steps: list[dict] = []

    def step(name: str, command: str, seconds: float, **extra) -> None:
        steps.append({"step": name, "command": command, "seconds": round(seconds, 2), **extra})
        print(f"{seconds:7.1f}s  {name}: {command}", flush=True)

    with tempfile.TemporaryDirectory(prefix="walkthrough-") as scratch:
        shared = Path(scratch)  # stands for the cluster's shared file system (/mnt/shared)
        begin = time.perf_counter()
        with LoopbackCluster(shared / "cluster", workers=2) as cluster:
            step("start the cluster (head + 2 workers)", "ray up cluster.yaml -y  [cloud; here: ray start x 3]",
                 time.perf_counter() - begin)
            dashboard = cluster.dashboard_url

            def run(*command: str, timeout: float = 1800):
                start = time.perf_counter()
                done = cluster.run(list(command), timeout=timeout)
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                return done, time.perf_counter() - start

            sweep = shared / "sweeps" / "mf"
            overrides = ["model=mf", "data=ml-100k", f"search.num_samples={args.samples}", f"out={sweep}",
                         f"ray.storage_path={shared / 'tune'}"]
            done, seconds = run(str(BIN / "recsearch"), "submit", "--no-wait", "--address", dashboard,
                                "--python", sys.executable, *overrides)
            job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
            step("submit the sweep as a Ray Job", "recsearch submit --address http://127.0.0.1:8265 "
                 + " ".join(overrides[:3]) + " out=/mnt/shared/sweeps/mf", seconds)

            start = time.perf_counter()
            jobs = httpx.get(f"{dashboard}/api/jobs/", headers=cluster.headers, timeout=10)
            jobs.raise_for_status()
            assert any(j["submission_id"] == job_id for j in jobs.json())
            step("the job in the dashboard's Jobs API", "ray dashboard cluster.yaml  -> http://127.0.0.1:8265",
                 time.perf_counter() - start)

            done, seconds = run(str(BIN / "ray"), "job", "logs", "--follow", "--address", dashboard, job_id)
            status = cluster.job_status(job_id)["status"]
            if status != "SUCCEEDED":
                raise SystemExit(f"the sweep job ended {status}:\n{done.stdout[-3000:]}")
            summary = json.loads((sweep / "summary.json").read_text())
            step("the sweep, followed to its end", "ray job logs --follow --address http://127.0.0.1:8265 JOB_ID",
                 seconds, trials=summary["trials"], best_valid=(summary["best"] or {}).get("valid"))

            done, seconds = run(str(BIN / "recsearch"), "report", str(sweep))
            step("leaderboard and report.html", "recsearch report /mnt/shared/sweeps/mf", seconds)

            start = time.perf_counter()
            url = cluster.serve(sweep, timeout=600)  # on a free port, tried again if it was taken meanwhile
            step("deploy best/ on the cluster", "recsearch serve /mnt/shared/sweeps/mf --address auto",
                 time.perf_counter() - start)

            start = time.perf_counter()
            answer = httpx.post(f"{url}/recommend/user", json={"user": "196", "k": 5}, timeout=30)
            answer.raise_for_status()
            step("query it", "curl -s localhost:8000/recommend/user -d '{\"user\": \"196\", \"k\": 5}'",
                 time.perf_counter() - start, answer=answer.json())
            stopping = time.perf_counter()
        step("stop the cluster", "ray down cluster.yaml -y  [cloud; here: stop the 3 nodes]", time.perf_counter() - stopping)

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine(), "cluster": "loopback: head (0 CPU) + 2 workers (1 CPU each)", "steps": steps}
    (RESULTS / "cluster_walkthrough.json").write_text(json.dumps(record, indent=2) + "\n")
    table = ["| step | command | seconds |", "|---|---|---:|"]
    table += [f"| {s['step']} | `{s['command']}` | {s['seconds']} |" for s in steps]
    (RESULTS / "cluster_walkthrough.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
