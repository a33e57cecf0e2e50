"""What recording a trial's epoch as Ray metrics (``recsearch.telemetry.record_epoch``) costs,
against the epoch it records: the fastest of three MF epochs (training + validation) on
ml-100k, both timed in the same Ray worker -> bench/results/telemetry_overhead.{json,md}.

    python bench/telemetry_overhead.py [--records 2000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import ray
from record import machine, write_results

RESULTS = Path(__file__).resolve().parent / "results"


@ray.remote(num_cpus=1)
def measure(records: int) -> dict:
    from recsearch import telemetry
    from recsearch.config import load_config, to_container
    from recsearch.data import load_split
    from recsearch.evaluation import Evaluator
    from recsearch.models.factory import build_model
    from recsearch.runtime import configure_threads
    from recsearch.training import train_step

    configure_threads()
    config = to_container(load_config(["model=mf", "data=ml-100k"]))
    split = load_split(config["data"], config["seed"], config["task"]["implicit_threshold"])
    model = build_model(config["model"], seed=config["seed"], device="cpu", task=config["task"]["name"])
    model.prepare(split.train)
    evaluator = Evaluator.for_task(config["task"], batch_size=config["train"]["eval_batch_size"])
    rows = [train_step(model, split, evaluator, epoch) for epoch in range(1, 4)]
    epoch = min(row["epoch_seconds"] + row["eval_seconds"] for row in rows)
    tags = {"sweep": "bench", "family": "mf", "trial": "mf_0"}
    telemetry.record_epoch(rows[-1], tags)  # the metric objects are made on first use
    start = time.perf_counter()
    for _ in range(records):
        telemetry.record_epoch(rows[-1], tags)
    record = (time.perf_counter() - start) / records
    return {"case": "MF on ml-100k, 1 CPU", "epoch_ms": round(epoch * 1e3, 1), "record_us": round(record * 1e6, 1),
            "record_share_of_epoch": f"{record / epoch:.2%}", "values_per_epoch": len(rows[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=2000, help="record_epoch calls timed")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    row = ray.get(measure.remote(args.records))
    ray.shutdown()
    write_results(RESULTS / "telemetry_overhead", [row], list(row),
                  "Recording one epoch's metrics against the epoch, in one Ray worker",
                  shown=[{key: str(value) for key, value in row.items()}],
                  host={**machine(), "load_average": Path("/proc/loadavg").read_text().split()[:3]})


if __name__ == "__main__":
    main()
