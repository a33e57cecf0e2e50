"""Shared fixtures. ``planted_split`` is a small dataset whose structure every model must learn:
users fall into groups, each group likes its own block of items, and ratings are high inside
the block and low outside, so both ranking and rating models have something to recover."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recsearch.data.dataset import Dataset, Feature, Interactions, Split

ROOT = Path(__file__).resolve().parent.parent
ML100K = Path(os.environ.get("RECSEARCH_DATA_DIR", ROOT.parent / "shared" / "datasets")) / "ml-100k"


def make_planted(n_users: int = 120, n_items: int = 60, n_groups: int = 4, per_user: int = 12,
                 noise: int = 2, seed: int = 0) -> tuple[Split, np.ndarray, np.ndarray]:
    """Returns (split, user_group, item_group). Each user rates ``per_user`` items of its own
    group (ratings 4-5) and ``noise`` items of other groups (ratings 1-2), at increasing
    timestamps that walk through the group's items in order (sequential structure). The last
    in-group item of each user is its test item, the one before its validation item."""
    rng = np.random.default_rng(seed)
    user_group = np.arange(n_users) % n_groups
    item_group = np.arange(n_items) % n_groups
    rows = {part: [] for part in ("train", "valid", "test")}
    for u in range(n_users):
        own = np.flatnonzero(item_group == user_group[u])
        start = rng.integers(len(own))
        liked = own[(start + np.arange(per_user)) % len(own)]
        other = rng.choice(np.flatnonzero(item_group != user_group[u]), noise, replace=False)
        for t, i in enumerate(other):
            rows["train"].append((u, i, float(rng.integers(1, 3)), t))
        for t, i in enumerate(liked):
            part = "test" if t == per_user - 1 else "valid" if t == per_user - 2 else "train"
            rows[part].append((u, i, float(rng.integers(4, 6)), noise + t))

    def table(part: str) -> Interactions:
        u, i, r, t = (np.array(c) for c in zip(*rows[part], strict=True))
        return Interactions(u, i, r, t)

    genres = [[f"g{item_group[i]}", "all"] for i in range(n_items)]
    dataset = Dataset(
        name="planted",
        interactions=table("train"),
        user_ids=np.array([f"u{u}" for u in range(n_users)]),
        item_ids=np.array([f"i{i}" for i in range(n_items)]),
        user_features={"group": Feature.from_lists([[f"g{g}"] for g in user_group], multi=False)},
        item_features={"genre": Feature.from_lists(genres, multi=True)},
        item_titles=np.array([f"Item {i}" for i in range(n_items)]),
    )
    return Split(dataset, table("valid"), table("test"), scheme="loo"), user_group, item_group


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Test-sized tensors gain nothing from intra-op threads, and on two shared cores every
    parallel op waits for a descheduled sibling thread: one thread ran the model tests 6x faster.
    Per test, because commands under test (``train_command``) size the pool themselves."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def planted():
    """(split, user_group, item_group) of the default planted dataset."""
    return make_planted()


@pytest.fixture(scope="session")
def planted_split(planted) -> Split:
    return planted[0]


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ml-100k.inter").is_file():
        pytest.skip(f"MovieLens 100K not found at {ML100K}")
    return ML100K
