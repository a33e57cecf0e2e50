"""The self-contained HTML report of a sweep: its leaderboard, learning curves showing where
ASHA stopped each trial, the best trial per family, and the metric against each
hyperparameter. Plots are PNGs inlined as base64, so the report is one file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from recsearch.evaluation.metrics import metric_mode, valid_key
from recsearch.stats import plus_minus
from recsearch.tuning.leaderboard import format_params
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.results import Trial


def write_report(plan: SweepPlan, trials: list[Trial], board: list[dict[str, Any]],
                 summary: dict[str, Any] | None, path: Path) -> None:
    task = plan.first["task"]
    parts = [_header(plan, board, summary),
             "<h2>Leaderboard</h2>", _leaderboard_table(board, task["metric"]),
             *_reevaluation(board, task["metric"]),
             *_blend((summary or {}).get("blend")),
             "<h2>Best trial per family</h2>", _per_family(plan, board, task),
             "<h2>Learning curves</h2>",
             "<p>Validation metric per epoch. &times; marks a trial ASHA stopped, &#9675; one stopped by "
             "its own patience, &#9650; one that failed; dotted lines are ASHA's rungs.</p>",
             _img(_curves(plan, trials, board, task)),
             "<h2>Metric against each hyperparameter</h2>",
             "<p>Best validation value of every finished trial.</p>"]
    for family in plan.families:
        figure = _against_hparams(plan, family, trials, task)
        if figure is not None:
            parts += [f"<h3>{_e(family)}</h3>", _img(figure)]
    body = "\n".join(parts)
    path.write_text(f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{_e(plan.name)}</title>"
                    f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")


_CSS = ("body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}.err{color:#a00}")


def _header(plan: SweepPlan, board: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    first = plan.first
    lines = [f"<h1>Sweep {_e(plan.name)}</h1>",
             f"<p>{_e(', '.join(plan.families))} on <b>{_e(first['data']['name'])}</b>, task "
             f"{_e(first['task']['name'])}, selected on validation {_e(first['task']['metric'])} "
             f"({_e(metric_mode(first['task']['metric']))}). {len(board)} trials.</p>"]
    if summary is None:
        lines.append("<p><b>The sweep has not finished:</b> no model was selected or tested yet.</p>")
    elif summary.get("best"):
        best, metric = summary["best"], first["task"]["metric"]
        seeds = best.get("seeds")
        tested = ("its configuration was also tested on each fresh seed of the re-evaluation, "
                  f"{plus_minus(seeds['test'].get(metric))}" if seeds else "the test split was evaluated for this "
                  "model only")
        chosen = (f" Chosen by the validation mean over {seeds['runs']} fresh seeds, "
                  f"{plus_minus(seeds['valid'].get(metric))}." if seeds else "")
        refitted = best.get("refit")
        if refitted:
            how = (f"each member retrained on {refitted['on']} ({refitted['interactions']} interactions) for its own "
                   "chosen epochs" if refitted["epochs"] is None else f"this configuration retrained on "
                   f"{refitted['on']} ({refitted['interactions']} interactions) for {refitted['epochs']} epoch(s)")
            chosen += (f" Refitted before its test: {how}, no early stopping; the test figures are the refitted "
                       "model's (exported as best/), the validation ones the selection run's.")
        if summary.get("refit_error"):
            chosen += (f" The refit on train + valid failed ({summary['refit_error']['error']}): best/ is this "
                       "model as trained on train alone.")
        what = (f"the blend {best['blend']}" if best["family"] == "blend" else
                f"{best['trial']} ({format_params(best['hparams'])}), epoch {best['epoch']}")
        lines.append(f"<p>Best: <b>{_e(what)}</b>: "
                     f"validation {_e(metric)} {best['valid'][metric]:.4f}, "
                     f"test {_e(metric)} {best['test'][metric]:.4f} ({_e(tested)}).{_e(chosen)} "
                     f"Wall time {summary['wall_seconds']:.0f} s.</p>")
        test_column = "test (refitted)" if refitted else "test"
        rows = [{"metric": name, "valid": value, test_column: best["test"].get(name)}
                for name, value in best["valid"].items()]
        lines.append(_table(rows, ["metric", "valid", test_column]))
    else:
        lines.append("<p class='err'><b>Every trial failed.</b></p>")
    return "\n".join(lines)


def _blend(record: dict[str, Any] | None) -> list[str]:
    if record is None:
        return []
    lines = ["<h2>Blend of the families' winners</h2>"]
    if not record["chosen"]:
        return [*lines, f"<p>No blend: {_e(record['why'])}.</p>"]
    metric = record["metric"]
    lines.append("<p>Each member's per-user standardised scores, weighted; the weights searched greedily on "
                 f"validation {_e(metric)} (each step adds the member and weight that raise it most). It beat "
                 "every single model on validation, so it is the sweep's model (best/).</p>")
    rows = [{"member": m["trial"], "family": m["family"], "weight": m["weight"], "epoch": m["epoch"],
             f"valid {metric} alone": m["valid"]} for m in record["members"]]
    rows.append({"member": "blend", "family": "", "weight": "", "epoch": "", f"valid {metric} alone": record["valid"][metric]})
    return [*lines, _table(rows, ["member", "family", "weight", "epoch", f"valid {metric} alone"])]


def _reevaluation(board: list[dict[str, Any]], metric: str) -> list[str]:
    rows = [{**row, "chosen": "chosen" if row.get("chosen") else "", "hyperparameters": format_params(row["hparams"])}
            for row in board if "seeds" in row]
    if not rows:
        return []
    return ["<h2>Re-evaluation on fresh seeds</h2>",
            f"<p>The best configurations retrained on fresh seeds: mean &plusmn; 95% confidence interval "
            f"(Student's t) of {_e(metric)} over those seeds. The best is chosen by its validation mean; "
            "the test means are shown, never used to choose.</p>",
            _table(rows, ["rank", "trial", "family", metric, "seeds", "valid_seeds", "test_seeds", "chosen",
                          "hyperparameters"])]


def _leaderboard_table(board: list[dict[str, Any]], metric: str) -> str:
    rows = [{**row, "hyperparameters": format_params(row["hparams"]), "error": row["error"] or ""} for row in board]
    return _table(rows, ["rank", "trial", "family", metric, "best_epoch", "epochs", "stopped", "hyperparameters",
                         "error"])


def _per_family(plan: SweepPlan, board: list[dict[str, Any]], task: dict[str, Any]) -> str:
    metric = task["metric"]
    best = [next((r for r in board if r["family"] == f and r["rank"] is not None), None) for f in plan.families]
    best = [r for r in best if r is not None]
    if not best:
        return "<p>No family has a finished trial.</p>"
    table = _table([{**r, "hyperparameters": format_params(r["hparams"])} for r in best],
                   ["family", "trial", "rank", metric, "best_epoch", "hyperparameters"])
    fig, ax = _figure(1, 1, width=max(4.0, 1.2 * len(best) + 2), height=3)
    ax = ax[0][0]
    ax.bar([r["family"] for r in best], [r[metric] for r in best], color="#4c72b0")
    ax.set_ylabel(f"best valid {metric}")
    return table + _img(fig)


def _curves(plan: SweepPlan, trials: list[Trial], board: list[dict[str, Any]], task: dict[str, Any]):
    from matplotlib.ticker import MaxNLocator

    metric, key = task["metric"], valid_key(task["metric"])
    winner = next((r["trial"] for r in board if r["rank"] == 1), None)
    stopped = {r["trial"]: r["stopped"] for r in board}
    fig, cells = _grid(len(plan.families), width=5, height=3.6)
    for ax, family in zip(cells, plan.families, strict=False):
        config = plan.configs[family]
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"valid {metric}")
        if config["iterative"]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            for rung in _rungs(config["scheduler"]):
                ax.axvline(rung, color="#999", linestyle=":", linewidth=1)
        else:  # one fit per trial: nothing to stop, no rungs
            ax.set_xticks([1], ["closed-form fit"])
            ax.set_xlabel("")
        for trial in (t for t in trials if t.family == family):
            points = [(row["epoch"], row[key]) for row in trial.history if row.get(key) is not None]
            if not points:
                continue
            x, y = [p[0] for p in points], [p[1] for p in points]
            best = trial.name == winner
            line, = ax.plot(x, y, linewidth=2.5 if best else 1, alpha=1 if best else 0.7,
                            marker="." if len(x) == 1 else None, label="best" if best else None)
            marker = {"asha": "x", "patience": "o", "error": "^"}.get(stopped[trial.name])
            if marker:
                ax.plot(x[-1], y[-1], marker=marker, color=line.get_color(), markersize=8,
                        markerfacecolor="none" if marker == "o" else line.get_color())
        if any(t.name == winner for t in trials if t.family == family):
            ax.legend(loc="best", fontsize=8)
    return fig


def _rungs(scheduler: dict[str, Any]) -> list[int]:
    if scheduler["name"] != "asha":
        return []
    rungs, t = [], scheduler["grace_period"]
    while t < scheduler["max_t"]:
        rungs.append(t)
        t *= scheduler["reduction_factor"]
    return rungs


def _against_hparams(plan: SweepPlan, family: str, trials: list[Trial], task: dict[str, Any]):
    space = plan.space(family)
    finished = [(t.hparams, t.best(task["metric"])) for t in trials if t.family == family and t.status == "TERMINATED"]
    finished = [(h, b[valid_key(task["metric"])]) for h, b in finished if b is not None]
    if not finished:
        return None
    names = list(space)
    fig, cells = _grid(len(names), width=3.2, height=3)
    for ax, name in zip(cells, names, strict=False):
        sampler = space[name]
        ys = [y for _, y in finished]
        xs = [h.get(name) for h, _ in finished]
        if sampler.categorical and not all(_number(v) for v in sampler.args):
            labels = [str(v) for v in sampler.args]
            xs = [labels.index(str(x)) if str(x) in labels else -1 for x in xs]
            ax.set_xticks(range(len(labels)), labels, rotation=30 if max(map(len, labels)) > 6 else 0, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif sampler.log_scale or (sampler.categorical and min(xs) > 0 and max(xs) >= 10 * min(xs)):
            ax.set_xscale("log")
        ax.scatter(xs, ys, s=18, alpha=0.8, color="#4c72b0")
        ax.set_xlabel(name)
        ax.set_ylabel(f"valid {task['metric']}")
    return fig


def _figure(rows: int, cols: int, width: float, height: float):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _grid(n: int, width: float, height: float, max_cols: int = 4):
    """A figure of ``n`` panels, at most ``max_cols`` per row; returns (figure, panels)."""
    cols = min(max_cols, n)
    fig, axes = _figure(-(-n // cols), cols, width=width * cols, height=height)
    cells = [ax for row in axes for ax in row]
    for ax in cells[n:]:
        ax.set_visible(False)
    return fig, cells[:n]


def _img(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return f"<img alt='plot' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
            cells.append(f"<td class='n'>{_e(text)}</td>" if numeric else f"<td>{_e(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _e(text: Any) -> str:
    return html.escape(str(text))
