"""Is the sweep's blend better than its winner alone beyond one split's luck? On several split
seeds of MovieLens 100K's random 0.8/0.1/0.1 split, the same refitted sweep runs twice, with and
without ``search.blend``, and each exports and tests the model it chose: the blend, or the
winner alone (as a user would get it without the flag). Paired by seed, the gap is the blend's
worth. Writes ``bench/results/blend_seeds.{json,md}``.

    .venv/bin/python bench/blend_seeds.py [--seeds 1 2 3] [--samples 8] [--out runs/blend-seeds]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from record import write_results

from recsearch.stats import estimate, plus_minus

HERE = Path(__file__).resolve().parent
FAMILIES = "[ease,mf,multvae]"
COLUMNS = ["seed", "with search.blend", "without (the winner alone)", "gap"]


def tested(out: Path, seed: int, samples: int, blend: bool) -> dict:
    recsearch = str(Path(sys.executable).with_name("recsearch"))
    subprocess.run([recsearch, "sweep", f"search.models={FAMILIES}", "data=ml-100k", f"seed={seed}",
                    f"search.num_samples={samples}", "search.refit=true", f"search.blend.enabled={str(blend).lower()}",
                    "ray.verbose=0", f"out={out}"], check=True)
    best = json.loads((out / "summary.json").read_text())["best"]
    return {"model": best.get("blend") or f"{best['trial']} {best['hparams']}",
            "valid": best["valid"]["ndcg@10"], "test": best["test"]["ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="split (and sweep) seeds")
    parser.add_argument("--samples", type=int, default=8, help="trials per family")
    parser.add_argument("--out", default="runs/blend-seeds", help="the sweeps go to <out>/<seed>-{blend,winner}")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        blend = tested(Path(args.out) / f"{seed}-blend", seed, args.samples, True)
        winner = tested(Path(args.out) / f"{seed}-winner", seed, args.samples, False)
        rows.append({"seed": seed, "blend": blend, "winner": winner, "gap": blend["test"] - winner["test"]})
        print(rows[-1], flush=True)
    gaps = estimate([r["gap"] for r in rows])
    shown = [{"seed": r["seed"], "with search.blend": f"{r['blend']['test']:.4f} ({r['blend']['model']})",
              "without (the winner alone)": f"{r['winner']['test']:.4f} ({r['winner']['model']})",
              "gap": f"{r['gap']:+.4f}"} for r in rows]
    write_results(HERE / "results" / "blend_seeds", rows, COLUMNS,
                  f"ml-100k, random 0.8/0.1/0.1 split on seeds {args.seeds}: `recsearch sweep "
                  f"search.models={FAMILIES} search.num_samples={args.samples} search.refit=true` with and without "
                  "search.blend.enabled=true; test NDCG@10 of the model each exported", shown=shown,
                  notes=f"Gap (blend minus winner), mean ± 95% CI over seeds: {plus_minus(gaps)}; "
                        f"blend ahead on {sum(r['gap'] > 0 for r in rows)} of {len(rows)}.", gap=gaps)


if __name__ == "__main__":
    main()
