"""recsearch against RecBole 1.2.1 in the same run, on the same machine, data and settings.

    python bench/vs_recbole.py              # -> bench/results/vs_recbole.{json,md}
    python bench/vs_recbole.py --rounds 3   # more alternations: medians of more runs

MovieLens 100K, random 0.8/0.1/0.1 split (GRU4Rec and our LSTM: leave-one-out), embedding 64,
batch 2048, one sampled negative (BPR, NeuMF), NeuMF layers [128, 64], GRU4Rec/LSTM hidden 64
and 50 items of context. RecBole's NeuMF batch of 2048 counts rows, positives and negatives:
1024 interactions a step, which ours counts (``perf.NEUMF``), so both take 79 steps an epoch;
the ``steps_per_epoch`` rows check that BPR's and NeuMF's epochs take as many optimiser steps
on both sides ("same"), so that an epoch's time compares the same work.
Each round runs every pair once, RecBole's case and ours one after the other, each in its own
process, so a machine whose load drifts slows both sides alike; the table gives the median over
rounds and the ratio RecBole / recsearch (higher: recsearch faster, or leaner for peak_rss_gib,
each process's peak resident memory).

RecBole needs numpy<2, so it runs in its own virtual environment, made here on first use at
bench/.recbole (gitignored) with torch==2.13.0 (the CPU build on this machine's disk), RecBole's
wheel without its dependencies (they pin an old ray) and the rest of what it imports.
bench/recbole_case.py is what runs there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from perf import in_subprocess, neumf_products_epoch_s
from record import machine, write_results

HERE = Path(__file__).resolve().parent
VENV = HERE / ".recbole"
RECBOLE = ["torch==2.13.0", "--no-deps recbole==1.2.1",
           "numpy<2 pandas<3 scipy tqdm colorlog==4.7.2 colorama==0.4.4 scikit-learn pyyaml tensorboard thop "
           "tabulate plotly texttable psutil"]
PAIRS = [  # what is compared: RecBole model, our perf.py case, measures (peak_rss_gib: the process's peak memory)
    ("BPR", "mf", ("epoch_s", "eval_s", "peak_rss_gib", "steps_per_epoch")),
    ("NeuMF", "ncf", ("epoch_s", "eval_s", "peak_rss_gib", "steps_per_epoch")),
    ("NeuMF", "ncf-bf16", ("epoch_s", "eval_s", "peak_rss_gib")),  # amp=true: bf16 where the CPU multiplies it natively
    ("ItemKNN", "itemknn", ("fit_s", "eval_s", "peak_rss_gib")),
    ("GRU4Rec", "lstm", ("epoch_s", "eval_s", "peak_rss_gib", "steps_per_epoch")),
]
# Pairs whose epochs must take as many optimiser steps on both sides, or the epoch's time compares
# unequal work per step (RecBole's NeuMF batch counts rows, ours interactions: perf.NEUMF). GRU4Rec
# trains one sequence per target and our LSTM one per user's window, by design: not checked
SAME_STEPS = {"mf", "ncf"}
TARGETS = {("mf", "epoch_s"): 5, ("mf", "eval_s"): 5, ("ncf", "epoch_s"): 5, ("ncf", "eval_s"): 5,
           ("ncf-bf16", "epoch_s"): 5, ("ncf-bf16", "eval_s"): 5,
           ("itemknn", "fit_s"): 5, ("lstm", "epoch_s"): 20}  # the performance issue's ratios


def recbole_python() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} for RecBole 1.2.1 (a few minutes, once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        for spec in RECBOLE:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *spec.split()], check=True)
    return python


def recbole_case(model: str, data_root: str) -> dict:
    done = subprocess.run([str(recbole_python()), str(HERE / "recbole_case.py"), model, data_root],
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        return {"model": model, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_flags() -> list[str]:
    """The CPU features that decide which kernels torch runs."""
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni") if f in flags]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of every pair (default: 2)")
    parser.add_argument("--pairs", default=",".join(p[0] for p in PAIRS), help="RecBole models to compare")
    args = parser.parse_args()
    data_root = os.environ.get("RECSEARCH_DATA_DIR") or str(HERE.parent.parent / "shared" / "datasets")
    os.environ["RECSEARCH_DATA_DIR"] = data_root  # our cases (conf/data/ml-100k.yaml) read the same files
    wanted = [p for p in PAIRS if p[0] in args.pairs.split(",")]
    runs: dict[str, list[tuple[dict, dict]]] = {case: [] for _, case, _ in wanted}
    for round_ in range(1, args.rounds + 1):
        theirs = {}  # RecBole runs each model once a round, against every case compared with it
        for model, case, _ in wanted:
            if model not in theirs:
                theirs[model] = recbole_case(model, data_root)
                print(f"round {round_}: RecBole {json.dumps(theirs[model])}", flush=True)
            ours = in_subprocess(case, "ml-100k")
            print(f"round {round_}: recsearch {json.dumps(ours)}", flush=True)
            runs[case].append((theirs[model], ours))
    rows = []
    for model, case, measures in wanted:
        for measure in measures:
            pairs = [(t.get(measure), o.get(measure)) for t, o in runs[case]]
            pairs = [(t, o) for t, o in pairs if t is not None and o is not None]
            row = {"model": f"{model} / {case}", "measure": measure}
            if pairs:
                theirs, ours = statistics.median(t for t, _ in pairs), statistics.median(o for _, o in pairs)
                ratio = theirs / ours
                target = TARGETS.get((case, measure))
                if measure == "steps_per_epoch":
                    verdict = ("same" if theirs == ours else "DIFFER") if case in SAME_STEPS else ""
                else:
                    verdict = f"≥ {target}x {'met' if ratio >= target else 'MISSED'}" if target else ""
                row.update({"recbole": round(theirs, 4), "recsearch": round(ours, 4), "ratio": round(ratio, 1),
                            "target": verdict})
            else:
                errors = [r.get("error") for pair in runs[case] for r in pair if r.get("error")]
                row["target"] = f"error: {errors[0] if errors else 'no measurement'}"
            rows.append(row)
    host = {**machine(), "cpu_flags": cpu_flags()}
    # a subset of the pairs (--pairs) goes beside perf.py's partial runs, not over the full table
    results = HERE / "results" if len(wanted) == len(PAIRS) else HERE / "results" / "tmp"
    results.mkdir(parents=True, exist_ok=True)
    write_results(results / "vs_recbole", rows, ["model", "measure", "recbole", "recsearch", "ratio", "target"],
                  f"RecBole 1.2.1 / recsearch on ml-100k, median of {args.rounds} alternating rounds; CPU flags "
                  f"{' '.join(host['cpu_flags'])}", notes=neumf_floor(rows, runs), host=host, runs=runs)


def neumf_floor(rows: list[dict], runs: dict) -> str:
    """How far this CPU lets a NeuMF epoch go: its step's matrix products alone (fp32 and bf16:
    ``perf.neumf_products_epoch_s``), against RecBole's epoch measured in this run."""
    theirs = next((r.get("recbole") for r in rows if r["model"] == "NeuMF / ncf" and r["measure"] == "epoch_s"), None)
    ours = next((o for _, o in runs.get("ncf", []) if "train_interactions" in o), None)
    if theirs is None or ours is None:
        return ""
    pairs = 2 * ours["train_interactions"]  # each positive and its one sampled negative
    floors = {dtype: neumf_products_epoch_s(dtype, pairs, ours["distinct_per_step"])
              for dtype in ("float32", "bfloat16")}
    distinct = ours["distinct_per_step"]
    return (f"NeuMF epoch floor on this CPU: the matrix products of its step alone (the first layer's "
            f"halves over a batch's {distinct['users']:.0f} distinct users and {distinct['items']:.0f} items, "
            f"the hidden layer over its pairs, forward, and the two products of each one's backward) over "
            f"an epoch's {pairs:,} pairs take {floors['float32']:.3f} s in fp32 and {floors['bfloat16']:.3f} s "
            f"in bf16 (perf.neumf_products_epoch_s, measured after the rounds): no epoch of this network, "
            f"with everything between the products still to come, can be more than "
            f"{theirs / floors['float32']:.1f}x RecBole's {theirs:.3f} s in fp32, "
            f"{theirs / floors['bfloat16']:.1f}x in bf16.")


if __name__ == "__main__":
    main()
