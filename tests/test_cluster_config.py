"""cluster.yaml, checked offline against Ray's own cluster-config schema and rules (no cloud SDK,
no credentials): what `ray up` would reject, these tests reject first."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def check(config: dict) -> dict:
    """What `ray up` does to a config before touching the cloud: fill in the provider's
    defaults, then validate against ray-schema.json and the cross-field rules."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_validation(cluster):
    prepared = check(cluster)
    head = prepared["head_node_type"]
    workers = {name: t for name, t in prepared["available_node_types"].items() if name != head}
    assert prepared["available_node_types"][head]["resources"] == {"CPU": 0}, "trials must not land on the head"
    assert workers and all(t["min_workers"] <= t["max_workers"] <= prepared["max_workers"] for t in workers.values())
    assert any("InstanceMarketOptions" in t["node_config"] for t in workers.values()), "GPU workers run on spot"


def test_dashboard_is_loopback_only_and_token_auth_is_on(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        starts = [c for c in commands if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "every node needs the token"


def test_setup_installs_this_project_on_every_node(cluster):
    setup = " ".join(cluster["setup_commands"])
    assert "make -C ~/recsearch install" in setup
    assert cluster["file_mounts"]["~/recsearch.git"] == "./.git"
    assert "/mnt/shared" in setup, "Tune's storage_path must be on storage every node can read"


def test_the_head_runs_prometheus_and_grafana_for_the_dashboards_metrics_tab(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    ray_start = next(c for c in cluster["head_start_ray_commands"] if "ray start --head" in c)
    for variable in ("RAY_PROMETHEUS_HOST=http://127.0.0.1:9090", "RAY_GRAFANA_HOST=http://127.0.0.1:3000",
                     "RAY_GRAFANA_IFRAME_HOST=http://127.0.0.1:3000"):
        assert variable in ray_start, "the dashboard process needs it"
    assert "recsearch dashboards --session /tmp/ray/session_latest" in head_start
    assert "--config.file=/tmp/ray/session_latest/metrics/prometheus/prometheus.yml" in head_start
    assert "--config /tmp/ray/session_latest/metrics/grafana/grafana.ini" in head_start
    assert "--web.listen-address=127.0.0.1:9090" in head_start and "GF_SERVER_HTTP_ADDR=127.0.0.1" in head_start
    setup = " ".join(cluster["head_setup_commands"])
    assert "prometheus" in setup and "grafana" in setup


def test_every_key_has_a_comment():
    lines = CLUSTER_YAML.read_text().splitlines()
    key = re.compile(r"^\s*(- )?[\w~./\"-]+:( |$)")
    uncommented = [
        f"line {n}: {line.strip()}" for n, line in enumerate(lines, 1)
        if key.match(line) and "#" not in line and not lines[n - 2].lstrip().startswith("#")
    ]
    assert not uncommented, "keys without a comment:\n" + "\n".join(uncommented)


def _misspelt_top_level_key(c):
    c["max_worker"] = c.pop("max_workers")


def _misspelt_node_type_key(c):
    c["available_node_types"]["gpu_worker"]["min_worker"] = 1


def _head_type_not_available(c):
    c["head_node_type"] = "cpu_head"


def _max_workers_below_min_workers(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = 3
    c["max_workers"] = 2


def _wrong_type(c):
    c["available_node_types"]["gpu_worker"]["max_workers"] = "four"


@pytest.mark.parametrize("breakage, message", [
    (_misspelt_top_level_key, r"'max_worker' was unexpected"),
    (_misspelt_node_type_key, r"'min_worker' was unexpected"),
    (_head_type_not_available, r"`head_node_type` must be one of `available_node_types`"),
    (_max_workers_below_min_workers, r"max_workers` is smaller than the sum of `min_workers`"),
    (_wrong_type, r"'four' is not of type 'integer'"),
], ids=["misspelt-key", "misspelt-node-type-key", "unknown-head-type", "max-below-min", "wrong-type"])
def test_broken_copies_are_rejected_with_a_clear_message(cluster, breakage, message):
    broken = copy.deepcopy(cluster)
    breakage(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=message):
        check(broken)
