"""ASHA against FIFO on the same search: same family, space, samples, seed and data split.

What ASHA should buy is compute, not quality: it stops the trials that are clearly behind at
its rungs, so the sweep trains far fewer epochs for (nearly) the same best validation metric.
Both sweeps share one Ray and one split; the script prints and saves, per scheduler, the wall
time, the trials stopped early, the epochs trained, the seconds spent training and evaluating
inside trials (less noisy than wall time on a shared machine) and the best trial's
validation and test metric.

    .venv/bin/python bench/asha_vs_fifo.py --model mf --samples 16 --max-epochs 30
    .venv/bin/python bench/asha_vs_fifo.py --model ncf data=ml-100k    # extra args: Hydra overrides
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from record import write_results

from recsearch.output import format_table
from recsearch.tuning.plan import plan_sweep
from recsearch.tuning.results import collect_trials
from recsearch.tuning.sweep import load_sweep_split, ray_session, run_sweep

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mf", help="model family (default: mf)")
    parser.add_argument("--samples", type=int, default=16, help="trials per scheduler (default: 16)")
    parser.add_argument("--max-epochs", type=int, default=30, help="train.max_epochs and ASHA's max_t (default: 30)")
    parser.add_argument("--out", default=str(HERE / "results" / "tmp" / "asha_vs_fifo"), help="sweep folders")
    parser.add_argument("--result", default=str(HERE / "results" / "asha_vs_fifo"), help="results, without suffix")
    parser.add_argument("overrides", nargs="*", default=["data=ml-100k"],
                        help="more Hydra overrides (default: data=ml-100k, as the README's table)")
    args = parser.parse_args()

    stamp = time.strftime("%Y%m%d-%H%M%S")
    common = [f"model={args.model}", f"search.num_samples={args.samples}", f"train.max_epochs={args.max_epochs}",
              "ray.verbose=0", *args.overrides]
    plans = {name: plan_sweep([*common, f"scheduler={name}", f"out={args.out}/{stamp}-{name}"])
             for name in ("fifo", "asha")}
    split = load_sweep_split(plans["fifo"].first)
    rows = []
    with ray_session(plans["fifo"].first["ray"]):
        for name, plan in plans.items():
            summary = run_sweep(plan, split=split)
            trials = collect_trials(plan)
            metric = plan.first["task"]["metric"]
            rows.append({
                "scheduler": name,
                "trials": summary["trials"]["run"],
                "stopped_early": summary["trials"]["stopped_by_asha"] + summary["trials"]["stopped_by_patience"],
                "epochs": sum(len(t.history) for t in trials),
                "trial_seconds": round(sum(r.get("epoch_seconds", 0) + r.get("eval_seconds", 0)
                                           for t in trials for r in t.history), 1),
                "wall_seconds": summary["wall_seconds"],
                f"valid {metric}": summary["best"]["valid"][metric],
                f"test {metric}": summary["best"]["test"][metric],
                "best": summary["best"]["hparams"],
            })
    print(format_table(rows, [k for k in rows[0] if k != "best"]))
    write_results(args.result, rows, [k for k in rows[0] if k != "best"],
                  f"ASHA against FIFO, {args.samples} {args.model} trials each, same space, seed and split",
                  command=common)


if __name__ == "__main__":
    main()
