"""Training and evaluation speed, and peak memory, per model and scale.

    python bench/perf.py                       # every case -> bench/results/perf.{json,md}
    python bench/perf.py --scales ml-100k      # a subset (results go to bench/results/tmp/)

Scales: MovieLens 100K (random 0.8/0.1/0.1 split; LSTM: temporal leave-one-out), and synthetic
data of 1M interactions (6,040 users x 3,706 items, ML-1M's shape) and 10M interactions
(100,000 users x 20,000 items). Gradient models use RecBole's benchmark settings (embedding 64,
batch 2048, one negative; NeuMF layers [128, 64], its batch as RecBole's: 1024 interactions and
their negatives; LSTM: our defaults, max length 50) and report the median epoch after a warm-up
epoch, training throughput (interactions per second), and the median full-ranking validation
(every item scored for every user, seen items masked, top-20).
Cases named "-bf16" run the same model with ``amp=True``: bf16 autocast in training and
scoring, which this CPU (AVX512-BF16) executes natively. Closed-form models report their fit
time. Each case runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its
own, on all the CPUs this machine gives torch.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from record import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CACHE = RESULTS / "tmp"  # generated synthetic datasets, reused across runs (gitignored)

SCALES = {  # synthetic generator arguments; ml-100k is read as conf/data/ml-100k.yaml says
    "1m": dict(n_users=6_040, n_items=3_706, n_interactions=1_000_000),
    "10m": dict(n_users=100_000, n_items=20_000, n_interactions=10_000_000),
}
MF = dict(dim=64, loss="bpr", negatives=1, batch_size=2048)
# RecBole's pointwise loader (NeuMF's) counts a batch's rows, positives and their sampled negatives:
# its train_batch_size 2048 with one negative is 1024 interactions a step, our batch_size 1024
# (its pairwise loader, BPR's, counts triples: 2048 there is our 2048)
NEUMF = dict(variant="neumf", dim=64, layers=[128, 64], negatives=1, batch_size=1024)
LSTM = dict(dim=64, hidden=64, max_len=50, batch_size=64)
CASES = {  # case -> (family, hyperparameters); "-bf16": amp=True, bf16 autocast where the CPU has it
    "mf": ("mf", MF), "ncf": ("ncf", NEUMF), "ncf-bf16": ("ncf", {**NEUMF, "amp": True}),
    "lstm": ("lstm", LSTM), "lstm-bf16": ("lstm", {**LSTM, "amp": True}),
    "itemknn": ("itemknn", {}), "userknn": ("userknn", {}), "ease": ("ease", {}),
}
EPOCHS = {"ml-100k": 6, "1m": 3, "10m": 2}  # the first is a warm-up, not counted
EVALS = {"ml-100k": 5, "1m": 3, "10m": 0}  # repeats after the first; 10m: the first (with its set-up) only
TIMEOUT_S = 900  # per case
# Cases left out, and why (the bound, measured or computed): kept in the report
SKIPPED = {
    ("lstm-bf16", "10m"): "as lstm",
    ("lstm", "10m"): "its full softmax grows with targets x items: from the 1m epoch (18-42 s on Intel Xeons, "
                     "22 s on an AMD EPYC; 0.69M targets, 3,706 items) 17-40 minutes per epoch (7M targets, "
                     "20,000 items), over the 15-minute limit of a case",
    ("ease", "10m"): "the dense 20,000 x 20,000 float64 solve needs ~9.6 GB, above the 8 GiB budget",
    ("userknn", "10m"): "user-user similarity of 100,000 users; item-based KNN is the scalable one",
}
TARGETS = {  # (case, scale, measure) -> upper bound in seconds (issue 7, RecBole / 5)
    ("mf", "ml-100k", "epoch_s"): 0.09,
    ("ncf", "ml-100k", "epoch_s"): 0.65,
    ("mf", "ml-100k", "eval_s"): 0.08,
    ("ncf", "ml-100k", "eval_s"): 0.08,
    ("ncf-bf16", "ml-100k", "epoch_s"): 0.65,
    ("ncf-bf16", "ml-100k", "eval_s"): 0.08,
    ("itemknn", "ml-100k", "fit_s"): 0.5,
    ("lstm", "ml-100k", "epoch_s"): 5.0,
    ("mf", "10m", "epoch_s"): 60.0,
    ("mf", "10m", "eval_s"): 60.0,
}
MEMORY_TARGET_GIB = {("mf", "10m"): 8.0}


def load_split(scale: str, family: str):
    """The split a case trains on; synthetic datasets are generated (and de-duplicated) once."""
    from recsearch.config import load_config, to_container
    from recsearch.data import Dataset
    from recsearch.data import load_split as load
    from recsearch.data.preprocess import preprocess, split
    from recsearch.data.synthetic import generate

    scheme = "loo" if family == "lstm" else "random"
    if scale == "ml-100k":  # conf/data/ml-100k.yaml, as `recsearch train data=ml-100k` reads it
        cfg = load_config(["data=ml-100k", f"data.split.scheme={scheme}"])
        return load(to_container(cfg.data), seed=0, implicit_threshold=None)
    cached = CACHE / f"synthetic-{scale}"
    if not cached.exists():
        partial = cached.with_suffix(".partial")  # renamed when complete: an interrupted run leaves no half cache
        preprocess(generate(**SCALES[scale], seed=0))[0].save(partial)
        partial.rename(cached)
    return split(Dataset.load(cached), scheme=scheme, seed=0)[0]


def run_case(case: str, scale: str) -> dict:
    """One measurement, in this process (the child)."""
    import torch

    from recsearch.evaluation import Evaluator
    from recsearch.models.base import model_class
    from recsearch.models.factory import create
    from recsearch.runtime import configure_threads

    threads = configure_threads()
    start = time.perf_counter()
    family, hparams = CASES[case]
    data = load_split(scale, family)
    result = {"case": case, "scale": scale, "threads": threads, "load_s": time.perf_counter() - start,
              "users": data.n_users, "items": data.n_items, "train_interactions": len(data.train.interactions)}
    model = create(model_class(family), hparams, seed=0, device="auto")  # CUDA when present
    result["device"] = str(model.device)
    result["hparams"] = {**hparams, "amp": getattr(model, "amp", False)}  # amp: in effect, not asked
    model.prepare(data.train)
    if hasattr(model, "steps_per_epoch"):  # mini-batch models
        result["steps_per_epoch"] = model.steps_per_epoch
    if model.iterative:
        epochs = []
        for _ in range(EPOCHS[scale]):
            start = time.perf_counter()
            model.train_epoch()
            epochs.append(time.perf_counter() - start)
        result["epochs_s"] = epochs
        result["epoch_s"] = statistics.median(epochs[1:])
        result["interactions_per_s"] = result["train_interactions"] / result["epoch_s"]
    else:
        start = time.perf_counter()
        model.fit_prepared()
        result["fit_s"] = time.perf_counter() - start
    evaluator = Evaluator("ranking", ["ndcg", "recall"], [10, 20], batch_size=1024)
    start = time.perf_counter()
    metrics = evaluator.evaluate(model, data, "valid")  # also builds the masks and targets, once per split
    result["eval_first_s"] = time.perf_counter() - start
    evals = []
    for _ in range(EVALS[scale]):
        start = time.perf_counter()
        evaluator.evaluate(model, data, "valid")
        evals.append(time.perf_counter() - start)
    result["eval_s"] = statistics.median(evals) if evals else result["eval_first_s"]
    result["eval_users"] = evaluator.last_counts["users"]
    result["eval_users_per_s"] = result["eval_users"] / result["eval_s"]
    result["valid"] = metrics
    if family == "ncf":
        # the step's first layer runs once per distinct user and item of a batch: how many, over
        # one epoch's batches (drawn after the measurements, which they would otherwise shift)
        from recsearch.models.kernels import distinct

        batches = [model._batch(index) for index in model.batches(model.n_examples())]
        result["distinct_per_step"] = {
            "users": statistics.mean(len(distinct(users, data.n_users)[0]) for users, _ in batches),
            "items": statistics.mean(len(distinct(pairs.reshape(-1), data.n_items)[0]) for _, pairs in batches)}
        # the floor of validation: the MLP tower runs over every (user, item) pair
        widths = [hparams["layers"][0], *hparams["layers"]]
        macs = sum(a * b for a, b in zip(widths[1:-1], widths[2:], strict=True)) + widths[-1]
        result["eval_gflop"] = 2 * macs * result["eval_users"] * data.n_items / 1e9
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    result["torch"] = torch.__version__
    return result


def matmul_gflops(dtype_name: str) -> float:
    """This CPU's sustained matrix-multiply rate on NeuMF's hidden-layer shape, all threads."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(1 << 16, 128).to(dtype), torch.randn(128, 64).to(dtype)
    a @ b
    start, repeats = time.perf_counter(), 50
    for _ in range(repeats):
        a @ b
    return 2 * a.shape[0] * 128 * 64 * repeats / (time.perf_counter() - start) / 1e9


def neumf_products_epoch_s(dtype_name: str, pairs: int, distinct: dict, repeats: int = 3) -> float:
    """The floor of a NeuMF epoch (``NEUMF``) on this CPU, all threads: the matrix products of its
    step alone (``NeuMFNetwork.pair_gradient``'s: the first layer's user and item halves over a
    batch's ``distinct`` users and items, the hidden layers over its pairs, forward, and the two
    products of each one's backward) over ``pairs`` (user, item) pairs in batches of ``NEUMF``'s
    users with one sampled item each beside the positive; nothing between the products, no
    embeddings, loss or optimiser. The median of ``repeats`` epochs after a warm-up one."""
    import torch

    dtype = getattr(torch, dtype_name)
    dim, layers = NEUMF["dim"], NEUMF["layers"]
    rows = NEUMF["batch_size"] * (1 + NEUMF["negatives"])
    users, items = round(distinct["users"]), round(distinct["items"])
    user_half, item_half = torch.randn(users, dim, dtype=dtype), torch.randn(items, dim, dtype=dtype)
    user_weight, item_weight = (torch.randn(layers[0], dim, dtype=dtype) for _ in range(2))
    hidden = [torch.randn(b, a, dtype=dtype) for a, b in zip(layers[:-1], layers[1:], strict=True)]
    first = torch.randn(rows, layers[0], dtype=dtype)  # the first layer's output per pair, from its halves

    def step() -> None:
        user_half @ user_weight.T
        item_half @ item_weight.T
        activations = [first]
        for weight in hidden:
            activations.append(activations[-1] @ weight.T)
        grad = activations[-1]  # the output layer's gradient has its shape
        for weight, inputs in zip(reversed(hidden), activations[-2::-1], strict=True):
            grad.T @ inputs
            grad = grad @ weight
        for half, weight in ((item_half, item_weight), (user_half, user_weight)):
            entity_grad = grad[: len(half)]  # the per-entity sums have this shape
            entity_grad.T @ half
            entity_grad @ weight

    def epoch() -> float:
        start = time.perf_counter()
        for _ in range(-(-pairs // rows)):
            step()
        return time.perf_counter() - start

    return statistics.median([epoch() for _ in range(repeats + 1)][1:])


def host_record() -> dict:
    """The machine record, with this CPU's measured matmul rates (the bound on NeuMF's evaluation)."""
    return {**machine(), "matmul_gflops": {name: round(matmul_gflops(name), 1) for name in ("float32", "bfloat16")}}


def in_subprocess(case: str, scale: str) -> dict:
    command = [sys.executable, __file__, "--case", case, scale]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"case": case, "scale": scale, "error": f"timed out after {TIMEOUT_S} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"case": case, "scale": scale, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def verdicts(row: dict) -> list[str]:
    out = []
    for (case, scale, measure), bound in TARGETS.items():
        if (case, scale) == (row["case"], row["scale"]) and measure in row:
            out.append(f"{measure} {'≤' if row[measure] <= bound else '>'} {bound:g} s")
    memory = MEMORY_TARGET_GIB.get((row["case"], row["scale"]))
    if memory and "peak_rss_gib" in row:
        out.append(f"memory {'<' if row['peak_rss_gib'] < memory else '≥'} {memory:g} GiB")
    return out


def shown(row: dict) -> dict:
    """A row as perf.md's table shows it."""
    if "error" in row or "skipped" in row:
        return {"case": row["case"], "scale": row["scale"], "target": row.get("error") or f"skipped: {row['skipped']}"}
    return {"case": row["case"], "scale": row["scale"], "train interactions": f"{row['train_interactions']:,}",
            "epoch / fit (s)": f"{row['epoch_s']:.3f}" if "epoch_s" in row else f"{row['fit_s']:.3f} (fit)",
            "interactions/s": f"{row['interactions_per_s']:,.0f}" if "interactions_per_s" in row else "",
            "full validation (s)": f"{row['eval_s']:.3f}", "users/s": f"{row['eval_users_per_s']:,.0f}",
            "peak memory (GiB)": f"{row['peak_rss_gib']:.2f}", "target": "; ".join(verdicts(row))}


def compute_bound(rows: list[dict], host: dict) -> str:
    """NeuMF's evaluation against this CPU's measured matmul rate: the floor of its time."""
    rate, lines = host["matmul_gflops"], []
    for row in rows:
        if "eval_gflop" in row and row["case"] == "ncf":
            lines.append(f"{row['case']} at {row['scale']}: a full validation is {row['eval_gflop']:.1f} GFLOP in "
                         f"the MLP tower alone; at this CPU's rate for torch's matmul on all threads "
                         f"({rate['float32']:.0f} GFLOP/s fp32, {rate['bfloat16']:.0f} bf16) that is "
                         f"{row['eval_gflop'] / rate['float32']:.3f} s in fp32, "
                         f"{row['eval_gflop'] / rate['bfloat16']:.3f} s in bf16 (the scoring's own products, MKL's "
                         f"on each thread alone, can run faster).")
    return "\n\n".join(lines)


COLUMNS = ["case", "scale", "train interactions", "epoch / fit (s)", "interactions/s", "full validation (s)",
           "users/s", "peak memory (GiB)", "target"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", default="ml-100k,1m,10m", help="comma-separated: ml-100k, 1m, 10m")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--case", nargs=2, metavar=("CASE", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case)))
        return
    scales, cases = args.scales.split(","), args.cases.split(",")
    rows = []
    for scale in scales:
        for case in cases:
            if (case, scale) in SKIPPED:
                rows.append({"case": case, "scale": scale, "skipped": SKIPPED[case, scale]})
                continue
            row = in_subprocess(case, scale)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("valid", "hparams", "epochs_s")}), flush=True)
    complete = set(scales) == {"ml-100k", *SCALES} and set(cases) == set(CASES)
    target = RESULTS if complete else CACHE
    target.mkdir(parents=True, exist_ok=True)
    host = host_record()
    write_results(target / "perf", rows, COLUMNS, "Epoch, full-ranking validation and peak memory per model and scale",
                  shown=[shown(row) for row in rows], notes=compute_bound(rows, host), host=host)


if __name__ == "__main__":
    main()
