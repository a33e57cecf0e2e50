"""``recsearch export SOURCE TARGET``: write a model's serving bundle, optionally compressed.

SOURCE is anything ``recsearch serve`` accepts (a model directory, a sweep directory, a
``recsearch train`` output). TARGET becomes a model directory that ``recsearch serve`` and
``serve deploy`` load like any other: the weights in fp32, fp16 or int8 (``--precision``), the
item-item matrix of EASE, RP3beta and the KNN models (a blend: of its members that have one) cut
to each item's ``--top-k`` largest entries.
An older directory (format 1, with the whole training set) exported in fp32 becomes a minimal
bundle. ``model.json`` records the compression under ``metadata.compression``; the metrics it
carries are still the source model's.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from recsearch.errors import ConfigError
from recsearch.models.compression import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="model, sweep or `recsearch train` output directory")
    parser.add_argument("target", metavar="TARGET", help="the new model directory (must not exist)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="how weights are stored: fp16 halves them, int8 quantises each matrix row (default: fp32)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K",
                        help="EASE, RP3beta, ItemKNN, UserKNN (and those members of a blend): keep each item's (user's) "
                             "K largest item-item weights")


def export_model(source: str | Path, target: str | Path, precision: str = "fp32", top_k: int | None = None) -> Path:
    """Write ``source``'s model to ``target`` as a (compressed) serving bundle; returns ``target``."""
    from recsearch.models.base import Recommender, UnsupportedOperation
    from recsearch.models.compression import encode
    from recsearch.output import check_writable
    from recsearch.serving.service import read_description, resolve_model_dir

    directory = resolve_model_dir(source)
    read_description(directory)
    target = Path(target).expanduser().resolve()
    if target.exists():
        raise ConfigError(f"{target} exists: export writes a new directory")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    check_writable(target)
    model = Recommender.load(directory, device="cpu")
    try:
        state = model.serving_state() if top_k is None else model.pruned_state(top_k)
    except UnsupportedOperation as err:
        raise ConfigError(f"--top-k: {err}") from None
    compression = {"precision": precision, "top_k": top_k, "source": str(directory)}
    try:
        model.save(target, metadata={"compression": compression}, state=encode(state, precision))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written model directory
        raise
    return target


def export_command(args: argparse.Namespace) -> None:
    target = export_model(args.source, args.target, args.precision, args.top_k)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"wrote {target} ({size / 2**20:.2f} MiB; weights {args.precision}"
          f"{f', top-{args.top_k} per item' if args.top_k else ''})")
