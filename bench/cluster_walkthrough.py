"""The README's cluster walk-through, run for real on a multi-node Ray cluster on loopback, with
the time each step takes -> bench/results/cluster_walkthrough.{json,md}.

    python bench/cluster_walkthrough.py [--samples 8]

The cluster is tests/helpers/multinode.py's: a head with no CPUs and two one-CPU worker nodes,
each its own ``ray start`` process, token authentication on, recsearch on the nodes' PATH.
``ray up`` / ``ray down`` are replaced by starting and stopping those nodes (the cloud steps
cannot run here); every other step is the command the README gives, run as a client of that
cluster. As cluster.yaml's head does, Prometheus runs with the configuration Ray generated for
the session (Debian's ``prometheus``, when installed), and every query of recsearch's Grafana
dashboards is then run against it: the number of series each returns is recorded (Grafana
itself has no Debian package). With Debian's ``chromium``, a headless browser photographs the
submitted job's page of the dashboard -> bench/results/jobs_page.png.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from record import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers.multinode import BIN, HOST, LoopbackCluster  # noqa: E402
from helpers.ports import PortTaken, with_free_port  # noqa: E402

from recsearch.telemetry.grafana import dashboard_files  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8, help="trials of the MF sweep on ml-100k")
    parser.add_argument("--requests", type=int, default=300, help="requests sent to the served model")
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
            session = next(n for n in cluster.nodes if n.name == "head").temp_dir / "session_latest"

            def run(*command: str, timeout: float = 1800):
                start = time.perf_counter()
                done = cluster.run(list(command), timeout=timeout)
                if done.returncode != 0:
                    raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                return done, time.perf_counter() - start

            _, seconds = run(str(BIN / "recsearch"), "dashboards", "--session", str(session))
            step("recsearch's dashboards into the session's Grafana provisioning",
                 "recsearch dashboards --session /tmp/ray/session_latest  [cluster.yaml's head]", seconds)
            prometheus = start_prometheus(session, shared / "prometheus")
            began = time.time()
            try:
                walk(cluster, run, step, shared, dashboard, args)
                panels = dashboard_series(prometheus.url, began)
            finally:
                prometheus.stop()
            stopping = time.perf_counter()
        step("stop the cluster", "ray down cluster.yaml -y  [cloud; here: stop the 3 nodes]", time.perf_counter() - stopping)

    notes = "\n".join([
        "", "Every query of recsearch's Grafana dashboards, run against Prometheus (Debian's, with the "
        "configuration Ray generated for the session) over the walk-through's time span: series returned.", "",
        "| dashboard | panel | series |", "|---|---|---:|",
        *(f"| {p['dashboard']} | {p['panel']} | {p['series']} |" for p in panels)]) if panels else \
        "Prometheus (Debian's `prometheus`) was not installed: the dashboards' queries were not run."
    shown = [{**s, "command": f"`{s['command']}`", "seconds": f"{s['seconds']:.1f}"} for s in steps]
    write_results(RESULTS / "cluster_walkthrough", steps, ["step", "command", "seconds"],
                  "The README's cluster walk-through on a loopback cluster: a head (0 CPU) and 2 workers (1 CPU each)",
                  shown=shown, notes=notes, host={**machine(), "load_average": Path("/proc/loadavg").read_text().split()[:3]},
                  panels=panels)


def walk(cluster: LoopbackCluster, run, step, shared: Path, dashboard: str, args) -> None:
    sweep = shared / "sweeps" / "mf"
    overrides = ["model=mf", "data=ml-100k", f"search.num_samples={args.samples}", f"out={sweep}",
                 f"ray.storage_path={shared / 'tune'}"]
    done, seconds = run(str(BIN / "recsearch"), "submit", "--no-wait", "--address", dashboard, *overrides)
    job_id = done.stdout.split("submitted job ", 1)[1].split()[0]
    step("submit the sweep as a Ray Job", "recsearch submit --address http://127.0.0.1:8265 "
         + " ".join(overrides[:3]) + " out=/mnt/shared/sweeps/mf", seconds)

    start = time.perf_counter()
    jobs = httpx.get(f"{dashboard}/api/jobs/", headers=cluster.headers, timeout=10)
    jobs.raise_for_status()
    listed = next(j for j in jobs.json() if j["submission_id"] == job_id)
    step("the job in the dashboard's Jobs API, with its metadata", "ray dashboard cluster.yaml  -> http://127.0.0.1:8265",
         time.perf_counter() - start, metadata=listed["metadata"])

    done, seconds = run(str(BIN / "ray"), "job", "logs", "--follow", "--address", dashboard, job_id)
    status = cluster.job_status(job_id)
    if status["status"] != "SUCCEEDED":
        raise SystemExit(f"the sweep job ended {status['status']}:\n{done.stdout[-3000:]}")
    summary = json.loads((sweep / "summary.json").read_text())
    step("the sweep, followed to its end", "ray job logs --follow --address http://127.0.0.1:8265 JOB_ID",
         seconds, trials=summary["trials"], best_valid=(summary["best"] or {}).get("valid"))

    if shutil.which("chromium"):
        start = time.perf_counter()
        page = f"{dashboard}/#/jobs/{status['job_id'] or job_id}"
        asyncio.run(screenshot(page, cluster.token, RESULTS / "jobs_page.png"))
        step("the job's page in the dashboard (headless Chromium)", "http://127.0.0.1:8265/#/jobs/JOB_ID",
             time.perf_counter() - start, screenshot="bench/results/jobs_page.png")

    done, seconds = run(str(BIN / "recsearch"), "report", str(sweep))
    step("leaderboard and report.html", "recsearch report /mnt/shared/sweeps/mf", seconds)

    start = time.perf_counter()
    url = cluster.serve(sweep, timeout=600)  # on a free port, tried again if it was taken meanwhile
    step("deploy best/ on the cluster", "recsearch serve /mnt/shared/sweeps/mf --address auto",
         time.perf_counter() - start)

    start = time.perf_counter()
    with httpx.Client(timeout=30) as http:
        answer = http.post(f"{url}/recommend/user", json={"user": "196", "k": 5})
        answer.raise_for_status()
        for n in range(args.requests):  # known and unknown users, refused k: every serving panel has data
            body = {"user": str(n % 50 + 1) if n % 10 else f"new{n}", "k": 0 if n % 25 == 0 else 5}
            http.post(f"{url}/recommend/user", json=body)
            http.post(f"{url}/similar-items", json={"item": str(n % 50 + 1), "k": 5})
    step(f"query it (then {2 * args.requests} more requests)",
         "curl -s localhost:8000/recommend/user -d '{\"user\": \"196\", \"k\": 5}'", time.perf_counter() - start,
         answer=answer.json())


class Prometheus:
    def __init__(self, process: subprocess.Popen | None, url: str | None):
        self.process, self.url = process, url

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


def start_prometheus(session: Path, data: Path) -> Prometheus:
    """Debian's prometheus on a free port, with the configuration Ray wrote for the session."""
    if not shutil.which("prometheus"):
        return Prometheus(None, None)
    config = session / "metrics" / "prometheus" / "prometheus.yml"

    def start(port: int) -> Prometheus:
        log = data / f"prometheus-{port}.log"
        data.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
                                    f"--web.listen-address={HOST}:{port}"], stdout=log.open("w"), stderr=subprocess.STDOUT)
        url = f"http://{HOST}:{port}"
        for _ in range(120):
            if process.poll() is not None:
                raise (PortTaken if "address already in use" in log.read_text() else RuntimeError)(log.read_text()[-2000:])
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).is_success:
                    return Prometheus(process, url)
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        process.terminate()
        raise RuntimeError(f"Prometheus did not get ready: {log}")

    return with_free_port(start)


def dashboard_series(prometheus: str | None, since: float) -> list[dict]:
    """Every panel query of the dashboards over [since, now], variables filled in: series returned.
    Prometheus scrapes every 10 s (Ray's config): waits for the last requests to be scraped."""
    if prometheus is None:
        return []
    values = {"$sweep": "mf", "$family": ".*", "$metric": "ndcg@10", "$endpoint": ".*", "$__rate_interval": "1m"}

    def query(expression: str) -> list:
        for name, value in values.items():
            expression = expression.replace(name, value)
        response = httpx.get(f"{prometheus}/api/v1/query_range", timeout=30,
                             params={"query": expression, "start": since, "end": time.time(), "step": "5s"})
        response.raise_for_status()
        return response.json()["data"]["result"]

    def every_panel() -> list[dict]:
        return [{"dashboard": path.stem, "panel": panel["title"].replace("$metric", "ndcg@10"),
                 "series": sum(len(query(target["expr"])) for target in panel["targets"])}
                for path in dashboard_files() for panel in json.loads(path.read_text())["panels"]]

    # a rate needs two scrapes of a counter after the requests: up to a minute, until every panel has data
    deadline = time.monotonic() + 60
    rows = every_panel()
    while not all(row["series"] for row in rows) and time.monotonic() < deadline:
        time.sleep(5)
        rows = every_panel()
    return rows


async def screenshot(url: str, token: str, path: Path, width: int = 1400, height: int = 1600) -> None:
    """Load ``url`` in headless Chromium with the dashboard's token cookie (what its login page
    sets) and save a PNG of the page, through the Chrome DevTools Protocol."""
    import aiohttp

    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        browser = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            for _ in range(120):
                if port_file.is_file() and port_file.read_text().strip():
                    break
                await asyncio.sleep(0.25)
            port = int(port_file.read_text().split()[0])
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
                    page = next(t for t in await response.json() if t["type"] == "page")
                async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as devtools:
                    calls = iter(range(1, 1000))

                    async def call(method: str, **params):
                        number = next(calls)
                        await devtools.send_json({"id": number, "method": method, "params": params})
                        async for message in devtools:
                            reply = json.loads(message.data)
                            if reply.get("id") == number:
                                return reply.get("result", {})

                    await call("Network.enable")
                    await call("Network.setCookie", name="ray-authentication-token", value=token, url=url.split("#")[0])
                    await call("Page.navigate", url=url)
                    await asyncio.sleep(8)  # the page loads, then fetches the job and its log
                    shot = await call("Page.captureScreenshot", format="png")
            path.write_bytes(base64.b64decode(shot["data"]))
        finally:
            browser.terminate()
            browser.wait(timeout=30)


if __name__ == "__main__":
    main()
