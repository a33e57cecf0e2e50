"""Where NeuMF's training step spends its time on this CPU: ml-100k, RecBole's benchmark
settings (``perf.NEUMF``: embedding 64, layers [128, 64], batch 1024, one negative), the
hand-written step (``NeuMFNetwork.pair_gradient``) and the optimisers, timed by what they call
rather than by a copy of the step. Writes ``bench/results/neumf_step.{json,md}``.

    .venv/bin/python bench/neumf_step.py                 # on all the CPUs torch is given
    .venv/bin/python bench/neumf_step.py --threads 1
    .venv/bin/python bench/neumf_step.py --amp           # the bf16 step -> neumf_step_bf16.{json,md}

For the run, a timer wraps each compiled kernel the step calls (``recsearch.models.kernels``),
the matrix products (``F.linear``, the ``@`` operator and bf16's ``kernels.weight_gradient``),
the sampling of a batch (``NeuralCF._batch``) and each optimiser's ``step``; what is left of
``pair_gradient`` (the gathers, the sparse gradients' assembly, ``l2``, Python) is "rest of the
step" and what is left of the epoch (batch order, the loss's sum) "rest of the epoch". Three
epochs after a warm-up one, in milliseconds per step. The timers add about a microsecond a
call, some 60 calls a step.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from functools import wraps
from pathlib import Path

import torch
import torch.nn.functional as F
from perf import NEUMF, load_split
from record import write_results

from recsearch.models import kernels
from recsearch.models.base import model_class
from recsearch.models.factory import create
from recsearch.runtime import configure_threads

HERE = Path(__file__).resolve().parent
KERNELS = ("distinct", "first_layer_", "relu_dropout_", "bce_head", "relu_backward_", "sum_by_entity")
PRODUCTS = "products (F.linear, @, weight_gradient)"
EPOCHS = 3
COLUMNS = ["part", "ms per step", "share of the epoch"]


def timed(spent: dict[str, float], label: str, function):
    @wraps(function)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter() - start
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch's threads (default: every CPU given)")
    parser.add_argument("--amp", action="store_true", help="amp=true: the step in bf16 (where the CPU has native bf16)")
    parser.add_argument("--result", default=None, help="results, without suffix (default: bench/results/neumf_step"
                                                        "[_bf16])")
    args = parser.parse_args()
    threads = configure_threads(args.threads)

    model = create(model_class("ncf"), {**NEUMF, "amp": args.amp}, seed=0, device="cpu")
    if args.amp and not model.amp:
        raise SystemExit("--amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so amp would be ignored")
    result = args.result or str(HERE / "results" / ("neumf_step_bf16" if args.amp else "neumf_step"))
    model.prepare(load_split("ml-100k", "ncf").train)
    model.train_epoch()  # compiles, and settles the allocator
    spent: dict[str, float] = defaultdict(float)
    for name in KERNELS:
        setattr(kernels, name, timed(spent, name, getattr(kernels, name)))
    F.linear = timed(spent, PRODUCTS, F.linear)
    torch.Tensor.__matmul__ = timed(spent, PRODUCTS, torch.Tensor.__matmul__)
    kernels.weight_gradient = timed(spent, PRODUCTS, kernels.weight_gradient)  # bf16's weight gradients
    model._batch = timed(spent, "sampling (_batch)", model._batch)
    model.net.pair_gradient = timed(spent, "pair_gradient", model.net.pair_gradient)
    for kind, optimizer in model.optimizers.items():
        optimizer.step = timed(spent, f"{kind} optimiser step", optimizer.step)

    start = time.perf_counter()
    for _ in range(EPOCHS):
        model.train_epoch()
    total = time.perf_counter() - start
    steps = EPOCHS * model.steps_per_epoch
    inner = sum(spent[name] for name in (*KERNELS, PRODUCTS))
    spent["rest of the step"] = spent.pop("pair_gradient") - inner
    spent["rest of the epoch"] = total - sum(spent.values())
    rows = [{"part": part, "ms per step": round(seconds / steps * 1e3, 3),
             "share of the epoch": round(seconds / total, 3)}
            for part, seconds in sorted(spent.items(), key=lambda item: -item[1])]
    rows.append({"part": "epoch", "ms per step": round(total / steps * 1e3, 3), "share of the epoch": 1.0})
    for row in rows:
        print(row)
    write_results(result, rows, COLUMNS,
                  f"ml-100k NeuMF (bench/perf.py's NEUMF{', amp=true' if args.amp else ''}), the hand-written step "
                  f"on {threads} thread(s), "
                  f"{EPOCHS} epochs of {steps // EPOCHS} steps after a warm-up; each part's time per step",
                  threads=threads, epoch_s=total / EPOCHS)


if __name__ == "__main__":
    main()
