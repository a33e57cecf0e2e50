"""``recsearch dashboards``: put recsearch's Grafana dashboards (``dashboards/*.json`` beside this
file: sweeps and serving) where the Grafana provisioning that Ray generates picks them up.

When a head node's dashboard starts, Ray writes a Grafana setup for its session under
``<session>/metrics/grafana/``: ``grafana.ini`` (start Grafana with it), a Prometheus datasource,
and ``provisioning/dashboards/default.yml``, a provider that loads every dashboard JSON in one
folder (``<session>/metrics/grafana/dashboards``, or ``$RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR``),
where Ray puts its own. Ours are copied into that folder, read from the provider itself, and show
up in Grafana's "Ray" folder beside Ray's within its rescan interval (10 s), no restart needed.
Ray rewrites the session's folder each time the head starts: install again after ``ray start
--head`` (cluster.yaml does it).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from recsearch.errors import RecsearchError

DASHBOARDS = Path(__file__).resolve().parent / "dashboards"
DEFAULT_SESSION = Path("/tmp/ray/session_latest")  # Ray's default temp dir; another with `ray start --temp-dir`
PROVIDER = Path("metrics/grafana/provisioning/dashboards/default.yml")


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def install_dashboards(session: Path = DEFAULT_SESSION) -> list[Path]:
    """Copy the dashboards into the folder the session's Grafana provider reads; returns the copies."""
    provider = Path(session) / PROVIDER
    if not provider.is_file():
        raise RecsearchError(f"{provider} not found: give --session the session folder of a running Ray head "
                             "started with its dashboard (Ray writes its Grafana setup there when it starts)")
    try:
        folder = Path(yaml.safe_load(provider.read_text())["providers"][0]["options"]["path"])
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as err:
        raise RecsearchError(f"{provider}: not the dashboard provider Ray writes ({err!r})") from None
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(source, folder / f"recsearch_{source.name}")) for source in dashboard_files()]


def dashboards_command(session: str | None) -> None:
    for copy in install_dashboards(Path(session) if session else DEFAULT_SESSION):
        print(f"installed {copy}")
