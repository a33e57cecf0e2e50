"""Does a sweep pay? Each family's default config against an ASHA sweep of its search space,
on MovieLens 100K (ranking, selected on validation NDCG@10).

For every family the script trains the default config as ``recsearch train`` does, then sweeps
``conf/search/<family>.yaml`` with ASHA, and records both validation NDCG@10 values, the
sweep's best hyperparameters, and the best trial's test metrics (touched once, after selection).
Every family runs on the random 0.8/0.1/0.1 split; the LSTM also on the temporal leave-one-out
split it is made for (rows "lstm-loo", random search, and "lstm-loo-optuna", TPE), and so does
the self-attention model (rows "sasrec-loo", "sasrec"). Rows run since the multi-seed
re-evaluation exists also record the chosen configuration's mean ± 95% CI over its fresh seeds.
Writes ``bench/results/ml100k_sweeps.{json,md}``.

    .venv/bin/python bench/ml100k_sweeps.py                        # every row, its SWEEPS trials
    .venv/bin/python bench/ml100k_sweeps.py --rows mf,ncf --samples 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from record import write_results

from recsearch.config import load_config
from recsearch.output import format_table
from recsearch.stats import plus_minus
from recsearch.training import train_command
from recsearch.tuning.plan import plan_sweep
from recsearch.tuning.sweep import load_sweep_split, ray_session, run_sweep

HERE = Path(__file__).resolve().parent
# row -> (family, trials, overrides). The defaults are already the best of small grids on
# ml-100k, and the first trial of each sweep runs them, so finding better takes more trials
# where trials are cheap.
SWEEPS = {
    "itemknn": ("itemknn", 64, []),
    "userknn": ("userknn", 256, []),
    "ease": ("ease", 16, []),
    "mf": ("mf", 64, []),
    "ncf": ("ncf", 16, []),
    "lstm": ("lstm", 32, []),
    "lstm-loo": ("lstm", 32, ["data.split.scheme=loo"]),
    "lstm-loo-optuna": ("lstm", 32, ["data.split.scheme=loo", "search.algorithm=optuna"]),  # TPE, same budget
    "sasrec-loo": ("sasrec", 16, ["data.split.scheme=loo"]),
    "sasrec": ("sasrec", 16, []),
    "rp3beta": ("rp3beta", 64, []),
    "multvae": ("multvae", 32, []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(SWEEPS), help="comma-separated rows of SWEEPS")
    parser.add_argument("--samples", type=int, help="trials per sweep (default: SWEEPS in this file)")
    parser.add_argument("--out", default=str(HERE / "results" / "tmp" / "ml100k_sweeps"), help="run folders")
    parser.add_argument("--result", default=str(HERE / "results" / "ml100k_sweeps"), help="results, without suffix")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for row in args.rows.split(","):
        family, samples, overrides = SWEEPS[row]
        common = [f"model={family}", "data=ml-100k", *overrides]
        default = train_command(load_config([*common, f"out={args.out}/{stamp}/{row}-default"]))
        plan = plan_sweep([*common, f"search.num_samples={args.samples or samples}", "ray.verbose=0",
                           f"out={args.out}/{stamp}/{row}-sweep"])
        with ray_session(plan.first["ray"]):
            summary = run_sweep(plan, split=load_sweep_split(plan.first))
        metric = plan.first["task"]["metric"]
        rows.append({
            "row": row,
            "family": family,
            "split": default["split"],
            f"default valid {metric}": default["valid"][metric],
            f"sweep valid {metric}": summary["best"]["valid"][metric],
            f"default test {metric}": default["test"][metric],
            f"sweep test {metric}": summary["best"]["test"][metric],
            "trials": summary["trials"]["run"],
            "stopped early": summary["trials"]["stopped_by_asha"] + summary["trials"]["stopped_by_patience"],
            "sweep seconds": round(summary["wall_seconds"]),
            **seed_columns(summary, metric),
            "best hparams": summary["best"]["hparams"],
            "run": stamp,
        })
    rows = merged(Path(f"{args.result}.json"), rows)
    columns = list(dict.fromkeys(k for row in rows for k in row if k != "best hparams"))
    print(format_table(rows, columns))
    write_results(args.result, rows, columns,
                  "ml-100k, seed 42, ASHA, the first trial of each sweep = the default config")


def seed_columns(summary: dict, metric: str) -> dict:
    """The chosen configuration's mean ± 95% CI over the re-evaluation's fresh seeds, if any."""
    seeds = summary["best"].get("seeds")
    if not seeds:
        return {}
    return {f"seeds valid {metric}": plus_minus(seeds["valid"].get(metric)),
            f"seeds test {metric}": plus_minus(seeds["test"].get(metric)), "seeds": seeds["runs"]}


def merged(result: Path, new_rows: list[dict]) -> list[dict]:
    """The rows of an earlier result file with these new ones in place of their namesakes, in
    SWEEPS order, so that rerunning some rows keeps the others (each row names its run)."""
    by_row = {row["row"]: row for row in json.loads(result.read_text())["rows"]} if result.exists() else {}
    by_row.update({row["row"]: row for row in new_rows})
    return [by_row[name] for name in SWEEPS if name in by_row]


if __name__ == "__main__":
    main()
