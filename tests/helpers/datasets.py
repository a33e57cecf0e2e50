"""The datasets the tests build, in one place. Plain functions, so that they can take parameters
and be named by a Hydra config (``planted_dataset`` is test_sweep's data source, imported by Ray
workers); tests get them through the fixtures of ``conftest.py``:

* ``planted`` / ``planted_split``: users in groups, each liking its own block of items
  (``planted``) — the structure every model must learn;
* ``make_dataset(users, items, ...)``: a dataset of the given interactions (``dataset``);
* ``make_split(n_users, n_items, train, valid, test)``: a split given pair by pair (``hand_split``);
* ``random_binary_dataset(n_users, n_items, seed)``: a random 0/1 matrix and its dataset;
* ``synthetic_small``: the synthetic generator's output at a small size (``SYNTHETIC_SMALL``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recsearch.data.dataset import Dataset, Feature, Interactions, Split

SYNTHETIC_SMALL = {"n_users": 400, "n_items": 300, "n_interactions": 20_000, "n_factors": 6}


def names(prefix: str, n: int) -> np.ndarray:
    """Raw ids ``u0, u1, ...`` (or ``i0, ...``)."""
    return np.array([f"{prefix}{k}" for k in range(n)])


def dataset(users, items, ratings=None, times=None, *, n_users: int | None = None, n_items: int | None = None,
            name: str = "toy", features: bool = False) -> Dataset:
    """A dataset of the given interactions: ratings default to 1, timestamps to the row order,
    and the catalogue to the largest ids seen. Raw ids are ``u<n>`` and ``i<n>``. With
    ``features``, users get a group (``g0``/``g1`` by parity), odd items the tags ``t<n>`` and
    ``all`` (even items none), and every item a title ``Title <n>``."""
    users, items = np.asarray(users), np.asarray(items)
    n_users = n_users or int(users.max()) + 1
    n_items = n_items or int(items.max()) + 1
    ratings = np.ones(len(users)) if ratings is None else ratings
    times = np.arange(len(users)) if times is None else times
    extra = {}
    if features:
        extra = {
            "user_features": {"group": Feature.from_lists([[f"g{u % 2}"] for u in range(n_users)], multi=False)},
            "item_features": {"tags": Feature.from_lists([[f"t{i}", "all"] if i % 2 else [] for i in range(n_items)],
                                                         multi=True)},
            "item_titles": np.array([f"Title {i}" for i in range(n_items)]),
        }
    return Dataset(name=name, interactions=Interactions(users, items, ratings, times),
                   user_ids=names("u", n_users), item_ids=names("i", n_items), **extra)


def pairs_table(pairs: Sequence[tuple[int, int]], ratings=None) -> Interactions:
    """Interactions from (user, item) pairs, in order; ratings default to 1."""
    users, items = np.array(pairs, dtype=np.int64).reshape(-1, 2).T
    rating = ratings if ratings is not None else [1.0] * len(pairs)
    return Interactions(np.array(users), np.array(items), np.array(rating), np.arange(len(pairs)))


def hand_split(n_users: int, n_items: int, train, valid, test, valid_ratings=None) -> Split:
    """A split given as (user, item) pairs per part (a "random" scheme split, ratings 1 unless
    ``valid_ratings`` are given for the validation pairs)."""
    data = Dataset("hand", pairs_table(train), names("u", n_users), names("i", n_items))
    return Split(data, pairs_table(valid, valid_ratings), pairs_table(test), scheme="random")


def random_binary(n_users: int, n_items: int, seed: int = 0) -> tuple[Dataset, np.ndarray]:
    """(dataset, x): a random 0/1 user x item matrix ``x`` (40% ones) and the dataset of its ones."""
    x = (np.random.default_rng(seed).random((n_users, n_items)) < 0.4).astype(np.float64)
    users, items = np.nonzero(x)
    return dataset(users, items, n_users=n_users, n_items=n_items, name="random"), x


def planted(n_users: int = 120, n_items: int = 60, n_groups: int = 4, per_user: int = 12,
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
    data = Dataset(
        name="planted",
        interactions=table("train"),
        user_ids=names("u", n_users),
        item_ids=names("i", n_items),
        user_features={"group": Feature.from_lists([[f"g{g}"] for g in user_group], multi=False)},
        item_features={"genre": Feature.from_lists(genres, multi=True)},
        item_titles=np.array([f"Item {i}" for i in range(n_items)]),
    )
    return Split(data, table("valid"), table("test"), scheme="loo"), user_group, item_group


def planted_dataset() -> Dataset:
    """The default planted data as one raw dataset, for a pipeline that splits it again
    (test_sweep's ``data/planted.yaml`` names it as its source)."""
    split = planted()[0]
    parts = (split.train.interactions, split.valid, split.test)
    merged = Interactions(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("user", "item", "rating", "timestamp")))
    return split.train.with_interactions(merged)
