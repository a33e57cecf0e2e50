"""Does the sweep's blend (``search.blend``) pass the small-catalogue target? One sweep of six
families on MovieLens 100K's random 0.8/0.1/0.1 split (seed 42, RecBole's table's split, whose
best row, EASE, tests at NDCG@10 0.330), run twice: trained on train only (RecBole's protocol),
and with ``search.refit=true`` (the blend's members retrained on train + valid before the test):

    recsearch sweep search.models=[ease,mf,multvae,userknn,itemknn,rp3beta] data=ml-100k \\
        search.num_samples=32 search.blend.enabled=true [search.refit=true]

The table gives every family's winner on validation (never tested: only the sweep's chosen model
is) and the blend the sweep chose and tested. ``--existing TRAIN REFIT`` tabulates two sweep
folders already run with those commands instead of running them. Writes
``bench/results/blend_sweep.{json,md}``.

    .venv/bin/python bench/blend_sweep.py [--out runs/blend] [--existing DIR DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from record import write_results

from recsearch.tuning.blending import BLEND_FILE, recipe

HERE = Path(__file__).resolve().parent
FAMILIES = "[ease,mf,multvae,userknn,itemknn,rp3beta]"
SWEEP = ["sweep", f"search.models={FAMILIES}", "data=ml-100k", "search.num_samples=32",
         "search.blend.enabled=true", "ray.verbose=0"]
COLUMNS = ["protocol", "model", "hyperparameters", "valid ndcg@10", "test ndcg@10", "test recall@10"]


def rows_of(directory: Path, protocol: str) -> list[dict]:
    summary = json.loads((directory / "summary.json").read_text())
    with open(directory / "leaderboard.csv", newline="") as handle:
        board = list(csv.DictReader(handle))
    winners = {}
    for row in board:  # ranked best first
        if row["rank"] and row["family"] not in winners:
            winners[row["family"]] = row
    rows = [{"protocol": protocol, "model": f"{family} (its winner)", "hyperparameters": row["hparams"],
             "valid ndcg@10": float(row["ndcg@10"]), "test ndcg@10": "", "test recall@10": ""}
            for family, row in winners.items()]
    best = summary["best"]
    rows.append({"protocol": protocol, "model": f"{best['family']} (chosen, tested)",
                 "hyperparameters": recipe(json.loads((directory / BLEND_FILE).read_text()))
                 if best["family"] == "blend" else best["hparams"], "valid ndcg@10": best["valid"]["ndcg@10"],
                 "test ndcg@10": best["test"]["ndcg@10"], "test recall@10": best["test"]["recall@10"],
                 "wall_seconds": summary["wall_seconds"], "refit": best.get("refit"), "directory": str(directory)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/blend", help="where the two sweeps go (<out>-train, <out>-refit)")
    parser.add_argument("--existing", nargs=2, metavar=("TRAIN", "REFIT"), help="sweep folders already run")
    args = parser.parse_args()
    if args.existing:
        train, refit = map(Path, args.existing)
    else:
        train, refit = Path(f"{args.out}-train"), Path(f"{args.out}-refit")
        recsearch = str(Path(sys.executable).with_name("recsearch"))
        subprocess.run([recsearch, *SWEEP, f"out={train}"], check=True)
        subprocess.run([recsearch, *SWEEP, "search.refit=true", f"out={refit}"], check=True)
    rows = rows_of(train, "train only") + rows_of(refit, "refit on train + valid")
    write_results(HERE / "results" / "blend_sweep", rows, COLUMNS,
                  f"ml-100k, random 0.8/0.1/0.1 split, seed 42: `recsearch {' '.join(SWEEP)}`, without and with "
                  "search.refit=true; each family's winner on validation, and the model the sweep chose (tested once)")


if __name__ == "__main__":
    main()
