"""Do the zip code or the occupation carry taste for cold users, beyond age x gender? ml-100k's
config drops zip codes (near-unique); their first digit is a US region (ten of them). This adds
that region as a user feature and scores held-out users of the ``cold_users`` split by segment
popularity over segments with and without it, on the split seeds of
``bench/cold_start_seeds.py``. Segments crossed with a feature split the users thinner, so the
feature is also tried as a naive-Bayes factor on the age x gender segment, which keeps its
users: log score(i) = log P(i | age, gender) + beta log(P(i | feature) / P(i)), each P the
smoothed share of ``SegmentPopularity``; beta 0 is segment popularity. Writes
``bench/results/cold_start_region.{json,md}``.

    .venv/bin/python bench/cold_start_region.py [--seeds 42 1 2 3 4 5]
"""

from __future__ import annotations

from pathlib import Path

import torch
from cold_start import split_seeds
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.data.dataset import Feature
from recsearch.evaluation import Evaluator
from recsearch.models.pop import Popularity
from recsearch.models.segpop import SegmentPopularity
from recsearch.runtime import configure_threads
from recsearch.stats import estimate, plus_minus

SEGMENTS = [["age", "gender"], ["gender", "region"], ["age", "region"], ["age", "gender", "region"]]
FACTORS = [("occupation", 0.25), ("occupation", 0.5), ("region", 0.25), ("region", 0.5)]  # (feature, beta)
TINY = 1e-12  # keeps the lift of an item without training interactions finite
COLUMNS = ["model", "seeds", "valid ndcg@10", "test ndcg@10", "test per seed"]
HERE = Path(__file__).resolve().parent


def with_region(seed: int):
    """The cold_users split of ml-100k with every user feature, and ``region``: the zip code's
    first digit ("other" for the codes that are not US ones)."""
    cfg = load_config(["data=ml-100k", f"seed={seed}", "data.split.scheme=cold_users", "data.source.exclude=[]"])
    split = load_split(to_container(cfg.data), seed, None)
    zips = split.train.user_features["zip_code"]
    codes = zips.vocabulary[zips.values]  # single-valued: one code per user
    split.train.user_features["region"] = Feature.from_lists(
        [[code[0] if code[:1].isdigit() else "other"] for code in codes], multi=False)
    return split


def naive_bayes(by_segment: SegmentPopularity, by_feature: SegmentPopularity, beta: float) -> torch.Tensor:
    """Every user's log score: the segment's share of item i (``by_segment``), times the lift
    P(i | feature) / P(i) (``by_feature``, segmented by the feature alone) to the power ``beta``."""
    users = torch.arange(by_segment.n_users)
    lift = (by_feature.score(users) + TINY).log() - (by_feature.prior + TINY).log()  # items no one trained on: 0
    return by_segment.score(users).log() + beta * lift


def main() -> None:
    seeds = split_seeds(__doc__)
    configure_threads(1)
    evaluator = Evaluator("ranking", ["ndcg"], [10])
    models = {"popularity": lambda: Popularity(seed=0, device="cpu", task="ranking")}
    models.update({f"segment popularity, {' x '.join(s)}": (lambda s=s: SegmentPopularity(
        segment=s, seed=0, device="cpu", task="ranking")) for s in SEGMENTS})
    factored = {f"age x gender segment popularity x {feature} factor, beta {beta}": (feature, beta)
                for feature, beta in FACTORS}
    scores = {name: {"valid": [], "test": []} for name in [*models, *factored]}
    for seed in seeds:
        split = with_region(seed)
        fitted = {name: make().fit(split.train) for name, make in models.items()}
        for name, model in fitted.items():
            for part in ("valid", "test"):
                scores[name][part].append(evaluator.evaluate(model, split, part)["ndcg@10"])
        by_feature = {feature: SegmentPopularity(segment=[feature], seed=0, device="cpu", task="ranking").fit(split.train)
                      for feature in {feature for feature, _ in FACTORS}}
        for name, (feature, beta) in factored.items():
            combined = naive_bayes(fitted["segment popularity, age x gender"], by_feature[feature], beta)
            for part in ("valid", "test"):
                scores[name][part].append(evaluator.evaluate_scores(combined, split, part)["ndcg@10"])
        print(seed, {name: round(s["test"][-1], 4) for name, s in scores.items()}, flush=True)
    rows = [{"model": name, "seeds": len(seeds), "valid": estimate(s["valid"]), "test": estimate(s["test"])}
            for name, s in scores.items()]
    shown = [{"model": r["model"], "seeds": r["seeds"], "valid ndcg@10": plus_minus(r["valid"]),
              "test ndcg@10": plus_minus(r["test"]), "test per seed": ", ".join(f"{v:.4f}" for v in r["test"]["values"])}
             for r in rows]
    write_results(HERE / "results" / "cold_start_region", rows, COLUMNS,
                  f"Cold users on ml-100k by segment popularity with the zip code's region or the occupation, split seeds {seeds} "
                  "(cold_users, 10% of users for valid, 10% for test); mean ± 95% t-interval over seeds",
                  shown=shown, seeds=seeds)


if __name__ == "__main__":
    main()
