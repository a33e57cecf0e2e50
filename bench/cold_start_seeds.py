"""Is the cold-user ranking of ``bench/cold_start.py`` more than one split's luck? Each held-out
part of ml-100k's ``cold_users`` split has about 94 users, so a test NDCG@10 moves by a few
hundredths with the users drawn. This re-draws the split on several seeds and trains, on each,
the configurations ``cold_start.py`` chose on validation (read from its result file), then
reports every model's mean ± 95% interval and, paired by split, its difference from segment
popularity: the comparison the issue's target makes, with its noise. Writes
``bench/results/cold_start_seeds.{json,md}``.

    .venv/bin/python bench/cold_start.py          # first: chooses the configurations
    .venv/bin/python bench/cold_start_seeds.py [--seeds 42 1 2 3 4 5]
"""

from __future__ import annotations

import ast
import json

from cold_start import FEATURE_SETS, HERE, fitted, split_seeds
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.runtime import configure_threads, seed_everything
from recsearch.stats import estimate, plus_minus

BASELINE = "segpop"
COLUMNS = ["model", "user features", "hyperparameters", "seeds", "valid ndcg@10", "test ndcg@10",
           f"test minus {BASELINE}", f"seeds above {BASELINE} (test)"]


def chosen_rows() -> list[dict]:
    rows = json.loads((HERE / "results" / "cold_start.json").read_text())["rows"]
    return [r for r in rows if r["split"] == "cold_users" and r["chosen"] == "yes"]


def main() -> None:
    seeds = split_seeds(__doc__)
    configure_threads(1)  # the machine is shared: two threads on its two cores oversubscribe it
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    chosen = chosen_rows()
    scores = {r["model"]: {"valid": [], "test": []} for r in chosen}
    for seed in seeds:
        seed_everything(seed)
        for row in chosen:
            cfg = load_config(["data=ml-100k", f"seed={seed}", "data.split.scheme=cold_users",
                               *FEATURE_SETS[row["user features"]]])
            split = load_split(to_container(cfg.data), seed, None)
            model, _ = fitted(row["model"], ast.literal_eval(row["hyperparameters"]), split, evaluator)
            for part in ("valid", "test"):
                scores[row["model"]][part].append(evaluator.evaluate(model, split, part)["ndcg@10"])
            print(seed, row["model"], {p: round(v[-1], 4) for p, v in scores[row["model"]].items()}, flush=True)
    baseline = scores[BASELINE]["test"]
    rows = []
    for row in chosen:
        test = scores[row["model"]]["test"]
        gaps = [a - b for a, b in zip(test, baseline, strict=True)]
        rows.append({"model": row["model"], "user features": row["user features"],
                     "hyperparameters": row["hyperparameters"], "seeds": len(seeds),
                     "valid": estimate(scores[row["model"]]["valid"]), "test": estimate(test),
                     "gap": estimate(gaps), "above": sum(g > 0 for g in gaps)})
    shown = [{**{k: r[k] for k in COLUMNS[:4]}, "valid ndcg@10": plus_minus(r["valid"]),
              "test ndcg@10": plus_minus(r["test"]), f"test minus {BASELINE}": plus_minus(r["gap"]),
              f"seeds above {BASELINE} (test)": f"{r['above']} of {r['seeds']}"} for r in rows]
    write_results(HERE / "results" / "cold_start_seeds", rows, COLUMNS,
                  f"Cold users on ml-100k over split seeds {seeds} (cold_users, 10% of users for valid, "
                  "10% for test); each model with the configuration bench/cold_start.py chose on validation "
                  "(seed 42); mean ± 95% t-interval over seeds, the gap to segment popularity paired by seed",
                  shown=shown, seeds=seeds)


if __name__ == "__main__":
    main()
