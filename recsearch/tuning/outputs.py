"""What a sweep leaves in its folder besides ``best/``: ``leaderboard.csv``, ``report.html``
and the printed leaderboard. The sweep writes them when it ends; ``recsearch report DIR``
rebuilds them from the storage at any time, also while the sweep runs or after it was killed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsearch.tuning import reevaluation
from recsearch.tuning.leaderboard import add_reevaluation, leaderboard, print_board, write_csv
from recsearch.tuning.plan import SweepPlan
from recsearch.tuning.report import write_report
from recsearch.tuning.results import Trial, collect_trials

SUMMARY_FILE = "summary.json"


def write_outputs(plan: SweepPlan, trials: list[Trial], board: list[dict[str, Any]],
                  summary: dict[str, Any] | None) -> None:
    """``leaderboard.csv`` and ``report.html`` (``summary``: None while no model was selected)."""
    out, metric = Path(plan.out), plan.first["task"]["metric"]
    write_csv(board, metric, out / "leaderboard.csv")
    write_report(plan, trials, board, summary, out / "report.html")
    print_board(board, metric)


def report_command(directory: str) -> list[dict[str, Any]]:
    plan = SweepPlan.load(directory)
    summary_path = Path(plan.out) / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    trials = collect_trials(plan)
    board = leaderboard(plan, trials)
    add_reevaluation(board, reevaluation.outcome(plan, board), plan.first["task"]["metric"])
    write_outputs(plan, trials, board, summary)
    print(f"\nwrote {plan.out}/leaderboard.csv and {plan.out}/report.html")
    return board
