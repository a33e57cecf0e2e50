"""Does training the LSTM on every position cost accuracy? Our LSTM cuts each user's sequence
into windows of max_len targets and fits all of them in one pass ("all positions"); RecBole's
GRU4Rec makes one example per target, its input the up-to-max_len items before it, and fits
only the last state ("per target"). Every target then reads a full max_len context, at about
max_len times the recurrent work. Both train the default config on MovieLens 100K
leave-one-out (seed 42) with the same targets and the same number of optimiser steps per
epoch (the per-target batch holds as many targets as an average batch of windows), under the
same early stopping on validation NDCG@10; test NDCG@10 of each one's best epoch.
Writes ``bench/results/lstm_formulations.{json,md}``.

    .venv/bin/python bench/lstm_formulations.py [--max-epochs N]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from record import write_results

from recsearch.config import load_config, to_container
from recsearch.data import load_split
from recsearch.evaluation import Evaluator
from recsearch.models.factory import hparams_of
from recsearch.models.lstm import SequentialRecommender
from recsearch.models.sequential import PAD, time_ordered, with_bos
from recsearch.output import format_table
from recsearch.training import train

HERE = Path(__file__).resolve().parent


class PerTargetLSTM(SequentialRecommender):
    """The same network, fitted on one example per target: the last state after the (up to)
    ``max_len`` tokens before it."""

    def prepare(self, train_data) -> None:
        super().prepare(train_data)
        inter = train_data.interactions
        items, offsets = time_ordered(inter.user, inter.item, inter.timestamp, train_data.n_users)
        tokens, starts = with_bos(items, offsets, self.bos)
        n_targets = np.diff(starts) - 1  # every token after BOS is a target
        start = np.repeat(starts[:-1], n_targets)
        position = np.arange(len(start)) - np.repeat(np.cumsum(n_targets) - n_targets, n_targets) + start + 1
        self.tokens = torch.as_tensor(tokens, device=self.device)
        self.positions = torch.as_tensor(position, device=self.device)
        self.context = torch.as_tensor(np.minimum(position - start, self.max_len), device=self.device)

    def n_examples(self) -> int:
        return len(self.positions)

    def batch_loss(self, index: torch.Tensor) -> torch.Tensor:
        position, length = self.positions[index], self.context[index]
        step = torch.arange(int(length.max()), device=self.device)
        index = ((position - length)[:, None] + step).clamp(max=len(self.tokens) - 1)
        inputs = torch.where(step < length[:, None], self.tokens[index], PAD)
        last = self.net(inputs)[torch.arange(len(index), device=self.device), length - 1]
        return F.cross_entropy(self.net.output(last).float(), self.tokens[position] - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, help="epochs at most, each (default: train.max_epochs of conf/model/lstm.yaml)")
    args = parser.parse_args()

    cfg = load_config(["model=lstm", "data=ml-100k", "data.split.scheme=loo"])
    split = load_split(to_container(cfg.data), cfg.seed)
    evaluator = Evaluator.for_task(cfg.task)
    max_epochs = args.max_epochs or cfg.train.max_epochs
    hparams = hparams_of(to_container(cfg.model))
    all_positions = SequentialRecommender(seed=cfg.seed, device="cpu", **hparams)
    all_positions.prepare(split.train)
    targets_per_window = (all_positions.windows[:, 1:] != PAD).sum().item() / len(all_positions.windows)
    per_target_batch = round(hparams["batch_size"] * targets_per_window)
    models = {"all positions": all_positions,
              "per target": PerTargetLSTM(seed=cfg.seed, device="cpu", **{**hparams, "batch_size": per_target_batch})}
    rows = []
    for name, model in models.items():
        result = train(model, split, evaluator, cfg.task.metric, max_epochs, cfg.train.patience,
                       on_epoch=lambda end, n=name: print(f"{n}: epoch {end.row['epoch']} valid ndcg@10 "
                                                          f"{end.row['valid/ndcg@10']:.4f} "
                                                          f"({end.row['epoch_seconds']:.1f} s)", flush=True))
        seconds = [step["epoch_seconds"] for step in result.history]
        rows.append({"formulation": name, "batch": model.hparams["batch_size"],
                     "steps per epoch": math.ceil(model.n_examples() / model.hparams["batch_size"]),
                     "epoch seconds": round(float(np.median(seconds)), 2), "epochs": len(seconds),
                     "best epoch": result.best_epoch, "valid ndcg@10": round(result.best_valid["ndcg@10"], 4),
                     "test ndcg@10": round(evaluator.evaluate(model, split, "test")["ndcg@10"], 4),
                     "train seconds to best": round(sum(seconds[: result.best_epoch]), 1)})
    print(format_table(rows, list(rows[0])))
    write_results(HERE / "results" / "lstm_formulations", rows, list(rows[0]),
                  "ml-100k leave-one-out, seed 42, the LSTM's default config", max_epochs=max_epochs, hparams=hparams)


if __name__ == "__main__":
    main()
