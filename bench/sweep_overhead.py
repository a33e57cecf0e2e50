"""Where a sweep's time goes: the README's four-family sweep on ml-100k, run as a user runs it
(`recsearch sweep search.models=[itemknn,mf,ncf,lstm] data=ml-100k search.num_samples=8`),
then taken apart from what it wrote.

- the command's own wall time, and the sweep's phases from ``summary.json``'s ``seconds``: data
  loading, Ray's start, the split into the object store, each family's trials, the
  re-evaluation, Ray's stop, ranking, the winner's test evaluation and export;
- per family, from every trial's ``result.json``: training and evaluation seconds (the work),
  the rest of the time inside the trials (each trial's set-up before its first epoch: the split
  from the object store, the model built and prepared; then reporting and checkpointing after
  every epoch), and the time the family's trial slots were not running a trial at all (actor
  start, Tune's scheduling, a slot left idle at the end).

Usage: python bench/sweep_overhead.py [--samples 8] [--families itemknn,mf,ncf,lstm] [extra overrides...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_results  # noqa: E402

from recsearch.evaluation.metrics import TEST_PREFIX  # noqa: E402
from recsearch.tuning.plan import SweepPlan  # noqa: E402
from recsearch.tuning.reevaluation import EXPERIMENT  # noqa: E402
from recsearch.tuning.results import experiment_trials  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def trial_times(path: str) -> dict[str, float]:
    """One trial's seconds from its result.json: inside the trial (up to its last report, a
    re-evaluation's test report included), training, evaluation, and its set-up (the first
    report's interval less its epoch's work)."""
    reports = [json.loads(line) for line in (Path(path) / "result.json").read_text().splitlines() if line.strip()]
    # a re-evaluation's test report repeats its last epoch's row: the epochs are the others
    epochs = [row for row in reports if not any(key.startswith(TEST_PREFIX) for key in row)]
    if not epochs:
        return {"inside": 0.0, "train": 0.0, "eval": 0.0, "setup": 0.0, "epochs": 0}
    train = sum(row.get("epoch_seconds", 0.0) for row in epochs)
    evaluation = sum(row.get("eval_seconds", 0.0) for row in epochs)
    first_work = epochs[0].get("epoch_seconds", 0.0) + epochs[0].get("eval_seconds", 0.0)
    return {"inside": reports[-1]["time_total_s"], "train": train, "eval": evaluation,
            "setup": epochs[0]["time_this_iter_s"] - first_work, "epochs": len(epochs)}


def family_row(plan: SweepPlan, name: str, wall: float, slots: int) -> dict:
    trials = [trial_times(trial.path) for trial in experiment_trials(plan, name)]
    total = {key: sum(t[key] for t in trials) for key in ("inside", "train", "eval", "setup", "epochs")}
    reporting = total["inside"] - total["train"] - total["eval"] - total["setup"]
    idle = wall * slots - total["inside"]
    return {
        "experiment": name, "trials": len(trials), "epochs": total["epochs"], "wall s": round(wall, 1),
        "slot s": round(wall * slots, 1), "train s": round(total["train"], 1), "eval s": round(total["eval"], 1),
        "trial set-up s": round(total["setup"], 1), "report+checkpoint s": round(reporting, 1),
        "outside trials s": round(idle, 1),
        "work share": round((total["train"] + total["eval"]) / (wall * slots), 3) if wall else None,
        "set-up per trial s": round(total["setup"] / len(trials), 2) if trials else None,
        "report per epoch ms": round(1000 * reporting / total["epochs"], 1) if total["epochs"] else None,
        "epoch+eval per epoch ms": round(1000 * (total["train"] + total["eval"]) / total["epochs"], 1)
        if total["epochs"] else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--families", default="itemknn,mf,ncf,lstm")
    parser.add_argument("--keep", action="store_true", help="keep the sweep's folder")
    args, extra = parser.parse_known_args()
    out = Path(tempfile.mkdtemp(prefix="recsearch-overhead-")) / "sweep"
    overrides = [f"search.models=[{args.families}]", "data=ml-100k", f"search.num_samples={args.samples}",
                 f"out={out}", *extra]
    command = [str(ROOT / ".venv" / "bin" / "recsearch"), "sweep", *overrides]
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    command_wall = time.perf_counter() - start
    load_after = os.getloadavg()

    summary = json.loads((out / "summary.json").read_text())
    plan = SweepPlan.load(out)
    ray_cfg = plan.first["ray"]
    slots = int((ray_cfg["num_cpus"] or os.cpu_count()) // ray_cfg["cpus_per_trial"])
    if ray_cfg["max_concurrent_trials"]:
        slots = min(slots, ray_cfg["max_concurrent_trials"])
    phases = summary["seconds"]
    experiments = [(family, phases[f"trials/{family}"]) for family in plan.families]
    if phases.get("reevaluation", 0) > 1:
        experiments.append((EXPERIMENT, phases["reevaluation"]))
    rows = [family_row(plan, name, wall, slots) for name, wall in experiments]
    phase_rows = [{"phase": "command (Python start, Hydra compose, checks, the sweep)", "s": round(command_wall, 1)}]
    phase_rows += [{"phase": name, "s": round(value, 1)} for name, value in phases.items()]
    before_sweep = command_wall - summary["wall_seconds"]
    notes = (f"Command {command_wall:.0f} s, of which the sweep's phases {summary['wall_seconds']:.0f} s "
             f"(the rest, {before_sweep:.0f} s: interpreter start, imports, composing and checking every "
             f"family's config, writing the report). Trial slots: {slots} (num_cpus / cpus_per_trial). "
             f"Load average before {load_before[0]:.2f}, after {load_after[0]:.2f}.\n\n"
             + "| phase | seconds |\n|---|---:|\n" + "".join(f"| {r['phase']} | {r['s']} |\n" for r in phase_rows))
    columns = ["experiment", "trials", "epochs", "wall s", "slot s", "train s", "eval s", "trial set-up s",
               "report+checkpoint s", "outside trials s", "work share", "set-up per trial s", "report per epoch ms",
               "epoch+eval per epoch ms"]
    shown = [{key: f"{value:g}" if isinstance(value, float) else value for key, value in row.items()} for row in rows]
    write_results(ROOT / "bench" / "results" / "sweep_overhead", rows, columns,
                  f"Four-family sweep on ml-100k, {args.samples} trials each, taken apart", shown=shown, notes=notes,
                  phases=phase_rows, command=" ".join(command), load=[load_before, load_after],
                  best=summary["best"] and {k: summary["best"][k] for k in ("trial", "valid", "test")})
    if not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
