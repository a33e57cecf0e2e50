"""One RecBole 1.2.1 measurement, run by bench/vs_recbole.py in RecBole's own virtual environment
(it needs numpy<2): epoch time, full-ranking validation time and peak memory of one model on
MovieLens 100K, with the settings recsearch's bench/perf.py uses. Prints one JSON line.

Three patches make RecBole 1.2.1 run beside torch 2.13 and scipy 1.15, none in site-packages:
``torch.load`` defaults to ``weights_only=False`` for RecBole's own files (its dataloaders and
checkpoints hold pickled objects; nothing here loads a file RecBole did not write in this run),
scipy's removed ``dok_matrix._update`` is put back (RecBole's ItemKNN builds with it), and
``recbole.quick_start`` is never imported (it imports ray, which this venv does not have).

    bench/.recbole/bin/python bench/recbole_case.py BPR /path/to/datasets
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time


def patch() -> None:
    import scipy.sparse as sp
    import torch

    original = torch.load

    def load(*args, **kwargs):
        kwargs.setdefault("weights_only", False)  # RecBole's own files only, written in this run
        return original(*args, **kwargs)

    torch.load = load
    if not hasattr(sp.dok_matrix, "_update"):
        def _update(self, data):
            for key, value in dict(data).items():
                self[key] = value

        sp.dok_matrix._update = _update


EMBEDDING = 64
MODELS = {  # RecBole model -> (its settings, epochs timed, warm-up epochs before them, sequential?)
    "BPR": ({"embedding_size": EMBEDDING}, 5, 1, False),
    "NeuMF": ({"mf_embedding_size": EMBEDDING, "mlp_embedding_size": EMBEDDING, "mlp_hidden_size": [128, 64],
               "dropout_prob": 0.0}, 3, 1, False),
    "ItemKNN": ({"k": 200, "shrink": 0.0}, 0, 0, False),
    # an epoch takes minutes (one sequence per target item): timed once, its first
    "GRU4Rec": ({"embedding_size": EMBEDDING, "hidden_size": 64, "num_layers": 1, "dropout_prob": 0.3,
                 "loss_type": "CE", "MAX_ITEM_LIST_LENGTH": 50}, 1, 0, True),
}


def main(model_name: str, data_path: str) -> dict:
    patch()
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    settings, epochs, warmup, sequential = MODELS[model_name]
    workdir = tempfile.mkdtemp(prefix="recbole-")
    os.chdir(workdir)  # RecBole writes log_tensorboard/ and saved/ into the working directory
    split = {"LS": "valid_and_test"} if sequential else {"RS": [0.8, 0.1, 0.1]}
    config = Config(model=model_name, dataset="ml-100k", config_dict={
        **settings, "data_path": data_path, "checkpoint_dir": workdir, "seed": 0, "reproducibility": True,
        "device": "cpu", "use_gpu": False, "show_progress": False, "log_wandb": False,
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "eval_args": {"split": split, "group_by": "user", "order": "TO" if sequential else "RO", "mode": "full"},
        "metrics": ["NDCG", "Recall"], "topk": [10, 20], "valid_metric": "NDCG@10",
        "train_batch_size": 64 if sequential else 2048,
        "train_neg_sample_args": None if sequential else {"distribution": "uniform", "sample_num": 1},
    })
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    start = time.perf_counter()
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    build_s = time.perf_counter() - start  # ItemKNN computes its similarities here
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    result = {"model": model_name, "recbole": __import__("recbole").__version__,
              "train_interactions": len(train_data.dataset), "steps_per_epoch": len(train_data)}
    times = []
    for epoch in range(warmup + max(epochs, 1)):  # a closed-form model's "epoch" stores its matrix
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        times.append(time.perf_counter() - start)
    if epochs:
        result["epoch_s"] = statistics.median(times[warmup:])
        result["epochs_s"] = times
    else:
        result["fit_s"] = build_s + times[0]
    evals = []
    for _ in range(3):
        start = time.perf_counter()
        valid = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
        evals.append(time.perf_counter() - start)
    result["eval_s"] = statistics.median(evals)
    result["valid_ndcg@10"] = float(valid["ndcg@10"])
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
