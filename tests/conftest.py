"""Shared fixtures. ``planted_split`` is a small dataset whose structure every model must learn:
users fall into groups, each group likes its own block of items, and ratings are high inside
the block and low outside, so both ranking and rating models have something to recover.
The other dataset fixtures hand out the builders of ``helpers/datasets.py``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import datasets

from recsearch.data.dataset import Split
from recsearch.data.synthetic import generate_with_truth

ROOT = Path(__file__).resolve().parent.parent
ML100K = Path(os.environ.get("RECSEARCH_DATA_DIR", ROOT.parent / "shared" / "datasets")) / "ml-100k"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test-sized tensors gain nothing from intra-op threads, and on two shared cores every
    parallel op waits for a descheduled sibling thread: one thread ran the model tests 6x faster.
    Per test, because commands under test (``train_command``) size the pool themselves."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def planted():
    """(split, user_group, item_group) of the default planted dataset."""
    return datasets.planted()


@pytest.fixture(scope="session")
def planted_split(planted) -> Split:
    return planted[0]


@pytest.fixture(scope="session")
def make_dataset():
    """``make_dataset(users, items, ratings=None, times=None, *, n_users=None, n_items=None,
    name="toy", features=False)``: a Dataset of those interactions (helpers.datasets.dataset)."""
    return datasets.dataset


@pytest.fixture(scope="session")
def make_split():
    """``make_split(n_users, n_items, train, valid, test, valid_ratings=None)``: a Split given
    as (user, item) pairs per part (helpers.datasets.hand_split)."""
    return datasets.hand_split


@pytest.fixture(scope="session")
def random_binary_dataset():
    """``random_binary_dataset(n_users, n_items, seed=0)`` -> (dataset, 0/1 matrix)."""
    return datasets.random_binary


@pytest.fixture(scope="session")
def synthetic_small():
    """(dataset, truth) of the synthetic generator at SYNTHETIC_SMALL's size, seed 3."""
    return generate_with_truth(**datasets.SYNTHETIC_SMALL, seed=3)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K
