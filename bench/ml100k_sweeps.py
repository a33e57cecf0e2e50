"""Does a sweep pay? Each family's default config against an ASHA sweep of its search space,
on MovieLens 100K (ranking, selected on validation NDCG@10).

For every family the script trains the default config as ``recsearch train`` does, then sweeps
``conf/search/<family>.yaml`` with ASHA, and records both validation NDCG@10 values, the
sweep's best hyperparameters, and the best trial's test metrics (touched once, after selection).
Families share one Ray; each family uses its own split settings (the LSTM: temporal
leave-one-out). Writes ``bench/results/ml100k_sweeps.{json,md}``.

    .venv/bin/python bench/ml100k_sweeps.py                         # all families, SAMPLES trials each
    .venv/bin/python bench/ml100k_sweeps.py --families mf,ncf --samples 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from recsearch.config import load_config
from recsearch.output import format_table, markdown_table, write_json
from recsearch.training import train_command
from recsearch.tuning.plan import plan_sweep
from recsearch.tuning.sweep import load_sweep_split, ray_session, run_sweep

HERE = Path(__file__).resolve().parent
# trials per family: the defaults are already the best of small grids on ml-100k, and the first
# trial of each sweep runs them, so finding better takes more trials where trials are cheap
SAMPLES = {"itemknn": 64, "userknn": 256, "ease": 16, "mf": 64, "ncf": 16, "lstm": 32}
FAMILIES = list(SAMPLES)
# the sequential model is judged on the temporal split it is made for
FAMILY_OVERRIDES = {"lstm": ["data.split.scheme=loo"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated model families")
    parser.add_argument("--samples", type=int, help="trials per family (default: SAMPLES in this file)")
    parser.add_argument("--out", default=str(HERE / "results" / "tmp" / "ml100k_sweeps"), help="run folders")
    parser.add_argument("--result", default=str(HERE / "results" / "ml100k_sweeps"), help="results, without suffix")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for family in args.families.split(","):
        common = [f"model={family}", "data=ml-100k", *FAMILY_OVERRIDES.get(family, [])]
        default = train_command(load_config([*common, f"out={args.out}/{stamp}/{family}-default"]))
        samples = args.samples or SAMPLES[family]
        plan = plan_sweep([*common, f"search.num_samples={samples}", "ray.verbose=0",
                           f"out={args.out}/{stamp}/{family}-sweep"])
        with ray_session(plan.first["ray"]):
            summary = run_sweep(plan, split=load_sweep_split(plan.first))
        metric = plan.first["task"]["metric"]
        rows.append({
            "family": family,
            "split": default["split"],
            f"default valid {metric}": default["valid"][metric],
            f"sweep valid {metric}": summary["best"]["valid"][metric],
            f"default test {metric}": default["test"][metric],
            f"sweep test {metric}": summary["best"]["test"][metric],
            "trials": summary["trials"]["run"],
            "stopped early": summary["trials"]["stopped_by_asha"] + summary["trials"]["stopped_by_patience"],
            "sweep seconds": round(summary["wall_seconds"]),
            "best hparams": summary["best"]["hparams"],
        })
    columns = [k for k in rows[0] if k != "best hparams"]
    print(format_table(rows, columns))
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} CPUs"
    write_json(f"{args.result}.json", {"machine": machine, "rows": rows})
    Path(f"{args.result}.md").write_text(
        f"ml-100k, seed 42, ASHA, the first trial of each sweep = the default config; {machine}; "
        f"command: `.venv/bin/python bench/ml100k_sweeps.py`\n\n" + markdown_table(rows, columns))
    print(f"wrote {args.result}.json and .md")


if __name__ == "__main__":
    main()
