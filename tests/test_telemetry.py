"""recsearch's metrics and Grafana dashboards, without Ray running: names that follow Prometheus'
conventions, dashboards that parse and plot only what recsearch exports, and their installation
where Ray's generated Grafana provisioning reads. tests/test_multinode.py reads the metrics a
real cluster exports."""

from __future__ import annotations

import json
import re

import pytest
from ray.dashboard.modules.metrics.templates import DASHBOARD_PROVISIONING_TEMPLATE

from recsearch.cli import main
from recsearch.errors import RecsearchError
from recsearch.telemetry import RAY_PREFIX, SPECS, exported_series
from recsearch.telemetry.grafana import dashboard_files, install_dashboards

DASHBOARDS = {path.stem: json.loads(path.read_text()) for path in dashboard_files()}
EXPORTED = set().union(*(exported_series(name) for name in SPECS))


def test_metric_names_follow_prometheus_conventions():
    for name, spec in SPECS.items():
        assert re.fullmatch(r"recsearch_[a-z][a-z0-9_]*", name), name
        assert name.endswith("_total") == (spec.kind == "counter"), f"{name}: _total on counters, only there"
        if "seconds" in spec.description:
            assert "_seconds" in name, f"{name}: the unit belongs in the name"
        assert all(re.fullmatch(r"[a-z_]+", tag) for tag in spec.tags), name
        assert (spec.kind == "histogram") == bool(spec.boundaries), name
        assert list(spec.boundaries) == sorted(set(spec.boundaries)), name


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and template variables."""
    targets = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return targets + [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]


@pytest.mark.parametrize("name", ["sweeps", "serving"])
def test_every_panel_queries_metrics_recsearch_exports(name):
    dashboard = DASHBOARDS[name]
    assert dashboard["uid"] == f"recsearch-{name}" and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["title"] and panel["targets"], panel
    for expression in queries(dashboard):
        queried = set(re.findall(rf"{RAY_PREFIX}\w+", expression))
        assert queried and queried <= EXPORTED, expression
        assert expression.count("(") == expression.count(")"), expression


def test_dashboards_plot_every_metric():
    queried = {m for d in DASHBOARDS.values() for e in queries(d) for m in re.findall(rf"{RAY_PREFIX}\w+", e)}
    plotted = {name for name in SPECS if exported_series(name) & queried}
    assert plotted == set(SPECS)


def test_panels_do_not_overlap():
    for name, dashboard in DASHBOARDS.items():
        cells = set()
        for panel in dashboard["panels"]:
            box = panel["gridPos"]
            mine = {(x, y) for x in range(box["x"], box["x"] + box["w"]) for y in range(box["y"], box["y"] + box["h"])}
            assert box["x"] + box["w"] <= 24 and not cells & mine, f"{name}: {panel['title']}"
            cells |= mine


def ray_session(tmp_path, provider_folder):
    """A session folder as a Ray head's dashboard leaves it, with its dashboard provider written
    from Ray's own template."""
    provisioning = tmp_path / "session" / "metrics" / "grafana" / "provisioning" / "dashboards"
    provisioning.mkdir(parents=True)
    (provisioning / "default.yml").write_text(DASHBOARD_PROVISIONING_TEMPLATE.format(
        dashboard_output_folder=provider_folder))
    return tmp_path / "session"


def test_dashboards_go_where_rays_provider_reads(tmp_path, capsys):
    folder = tmp_path / "elsewhere"  # as with RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR
    session = ray_session(tmp_path, folder)
    assert main(["dashboards", "--session", str(session)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["recsearch_serving.json", "recsearch_sweeps.json"]
    assert capsys.readouterr().out.count("installed ") == 2
    with pytest.raises(RecsearchError, match="not found: give --session"):
        install_dashboards(tmp_path / "no-session")


class _Trial:
    """What Tune's Trial gives a callback: its name (str) and config."""

    def __init__(self, name: str, config: dict):
        self.name, self.config = name, config

    def __str__(self) -> str:
        return self.name


def test_the_driver_records_every_reported_epoch_and_nothing_else(monkeypatch):
    from recsearch import telemetry
    from recsearch.tuning.monitor import SweepMonitor, TrialMetrics

    recorded = []
    monkeypatch.setattr(telemetry, "record_epoch", lambda row, tags: recorded.append((row["epoch"], tags)))
    monkeypatch.setattr(SweepMonitor, "_export", lambda self: None)  # the sweep's gauges: not under test
    epoch = {"epoch": 1, "loss": 0.5, "epoch_seconds": 0.1, "eval_seconds": 0.01, "valid/ndcg@10": 0.2}
    closing_test = {**epoch, "epoch": 2, "best_epoch": 1, "test/ndcg@10": 0.3}  # a re-evaluation's last report

    family = SweepMonitor("demo", "mf", {"task": {"metric": "ndcg@10"}, "train": {}})
    family.on_trial_result(0, [], _Trial("mf_0001", {"lr": 0.1}), epoch)
    points = TrialMetrics("demo")  # re-evaluation and refit trials: the family is the trial's own
    points.on_trial_result(0, [], _Trial("reeval_mf_1", {"run": {"family": "ease"}}), epoch)
    points.on_trial_result(0, [], _Trial("reeval_mf_1", {"run": {"family": "ease"}}), closing_test)
    points.on_trial_result(0, [], _Trial("reeval_mf_1", {"run": {"family": "ease"}}), {"epoch": 3, "best_epoch": 3})

    assert recorded == [(1, {"sweep": "demo", "family": "mf", "trial": "mf_0001"}),
                        (1, {"sweep": "demo", "family": "ease", "trial": "reeval_mf_1"})]
