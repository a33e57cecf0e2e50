"""Serving bundles on MovieLens 100K: how big, and what compressing them costs.

Every family is trained with its default config as ``recsearch train`` trains it (per-user random
0.8/0.1/0.1 split, seed 42, early stopping on validation NDCG@10; MF and ItemKNN also for
ratings, RMSE). Per model:

* the size of a saved model directory before (format 1: the whole training set with ratings,
  timestamps and every feature, plus the resumable state with the optimiser) and after (format 2,
  the serving bundle);
* for the ranking models, every variant ``recsearch export`` writes: fp16 and int8 for the
  embedding families (MF, NCF, LSTM), fp16, top-k and both for the item-item matrices (EASE,
  ItemKNN, UserKNN): its size, its test NDCG@10 and the relative change against the fp32 bundle,
  and its serving latency (``ModelService.recommend_users``, one thread, the median of repeated
  batches of 1 and of 32 known users, k=10, the variants taking turns) as a ratio to the fp32
  bundle's in the same run.

Sizes and quality do not depend on the machine's load; latency ratios do a little (the load
average is recorded). Writes bench/results/bundle_sizes.{json,md} and bundle_variants.{json,md}.

    .venv/bin/python bench/bundles.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.base import Recommender
from recsearch.models.factory import build_model
from recsearch.output import format_table
from recsearch.serving.export import export_model
from recsearch.serving.schemas import UserRecommendationRequest
from recsearch.serving.service import ModelService
from recsearch.training import Stopping, train

HERE = Path(__file__).resolve().parent
MODELS = [("pop", "ranking"), ("itemknn", "ranking"), ("userknn", "ranking"), ("ease", "ranking"),
          ("mf", "ranking"), ("ncf", "ranking"), ("lstm", "ranking"), ("mf", "rating"), ("itemknn", "rating")]
VARIANTS = {  # family -> (precision, top_k) exported besides the fp32 bundle
    **dict.fromkeys(("mf", "ncf", "lstm"), [("fp16", None), ("int8", None)]),
    "ease": [("fp16", None), ("fp32", 200), ("fp32", 50), ("fp16", 200)],
    "itemknn": [("fp16", None), ("fp32", 50), ("fp16", 50)],  # default k=200 neighbours
    "userknn": [("fp16", None), ("fp32", 20), ("fp16", 20)],  # default k=50 neighbours
}
SIZE_COLUMNS = ["model", "task", "before_bytes", "after_bytes", "after_vs_before"]
VARIANT_COLUMNS = ["model", "variant", "bytes", "vs_fp32_bytes", "test ndcg@10", "ndcg_change_%",
                   "latency_1_vs_fp32", "latency_32_vs_fp32"]


def size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def fit(family: str, task: str, root: Path):
    """Train as ``recsearch train model=FAMILY data=ml-100k task=TASK``: (model, split, evaluator)."""
    cfg = load_config([f"model={family}", "data=ml-100k", f"task={task}", "device=cpu", f"out={root}"])
    config = to_container(cfg)
    split = load_split(config["data"], cfg.seed, config["task"]["implicit_threshold"])
    evaluator = Evaluator.for_task(config["task"], batch_size=cfg.train.eval_batch_size)
    model = build_model(config["model"], seed=cfg.seed, device="cpu", task=config["task"]["name"])
    train(model, split, evaluator, config["task"]["metric"], cfg.train.max_epochs, Stopping.of(cfg.train))
    return model, split, evaluator


def save_format_1(model: Recommender, split, directory: Path, bundle: Path) -> None:
    """What ``model.save`` wrote before the bundle: the training set and the resumable state."""
    split.train.save(directory / "data")
    torch.save(model.state(), directory / "weights.pt")
    description = json.loads((bundle / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps({**description, "format": 1}, indent=2))


def latencies(services: list[ModelService], users: list[str], repeats: int) -> list[float]:
    """Median seconds of one ``recommend_users`` call for ``users``, per service: the services
    take turns in a shuffled order each round, so changes in the machine's load reach them alike."""
    requests = [UserRecommendationRequest(user=u, k=10) for u in users]
    times: list[list[float]] = [[] for _ in services]
    order = np.random.default_rng(1)
    for repeat in range(repeats + 1):
        for index in order.permutation(len(services)):
            start = time.perf_counter()
            services[index].recommend_users(requests)
            if repeat:  # the first round warms up
                times[index].append(time.perf_counter() - start)
    return [statistics.median(measured) for measured in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per latency figure")
    parser.add_argument("--result", default=str(HERE / "results" / "bundle"), help="results stem: <stem>_sizes, <stem>_variants")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a one-CPU replica
    sizes, variants = [], []
    with tempfile.TemporaryDirectory(prefix="bundles-") as tmp:
        root = Path(tmp)
        for family, task in MODELS:
            name = f"{family}-{task}"
            model, split, evaluator = fit(family, task, root / "runs" / name)
            bundle = model.save(root / name / "fp32")
            save_format_1(model, split, root / name / "format-1", bundle)
            before, after = size(root / name / "format-1"), size(bundle)
            sizes.append({"model": family, "task": task, "before_bytes": before, "after_bytes": after,
                          "after_vs_before": after / before})
            print(format_table(sizes[-1:], SIZE_COLUMNS), flush=True)
            if task != "ranking" or family not in VARIANTS:
                continue
            rng = np.random.default_rng(0)
            users = [str(u) for u in rng.choice(model.serving_data.user_ids, 32, replace=False)]
            rows, services = [], []
            for precision, top_k in [("fp32", None), *VARIANTS[family]]:
                directory = bundle if (precision, top_k) == ("fp32", None) else export_model(
                    bundle, root / name / f"{precision}-{top_k}", precision, top_k)
                services.append(ModelService.load(directory, device="cpu"))
                rows.append({"model": family, "variant": precision + (f" top-{top_k}" if top_k else ""),
                             "bytes": size(directory),
                             "test ndcg@10": evaluator.evaluate(services[-1].model, split, "test")["ndcg@10"]})
            for batch in (1, 32):
                for row, seconds in zip(rows, latencies(services, users[:batch], args.repeats), strict=True):
                    row[f"latency_{batch}_s"] = seconds
            reference = rows[0]
            for row in rows:
                row.update({"vs_fp32_bytes": row["bytes"] / reference["bytes"],
                            "ndcg_change_%": 100 * (row["test ndcg@10"] / reference["test ndcg@10"] - 1),
                            "latency_1_vs_fp32": row["latency_1_s"] / reference["latency_1_s"],
                            "latency_32_vs_fp32": row["latency_32_s"] / reference["latency_32_s"],
                            "load_1m": os.getloadavg()[0]})
            variants.extend(rows)
            print(format_table(rows, VARIANT_COLUMNS), flush=True)
    write_results(f"{args.result}_sizes", sizes, SIZE_COLUMNS,
                  "Saved model directory before (format 1) and after (format 2, the serving bundle), "
                  "ml-100k, every family's default config, seed 42")
    write_results(f"{args.result}_variants", variants, VARIANT_COLUMNS,
                  "`recsearch export` variants of the ml-100k ranking models: size, test NDCG@10 (change against "
                  "the fp32 bundle), serving latency as a ratio to the fp32 bundle (one thread, median of "
                  f"{args.repeats} calls for 1 and for 32 users)")


if __name__ == "__main__":
    main()
