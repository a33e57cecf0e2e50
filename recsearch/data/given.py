"""A split the user brings: train, valid and test interactions in three files, read for
``data.split.scheme=given`` (to reproduce a paper's protocol, or RecBole's benchmark files
``<name>.train.inter``, ``.valid.inter``, ``.test.inter``).

Each part is a source config of its own, any reader with its ``_target_`` and arguments, so the
three can be atomic files, tables or GroupLens files. Their ids are mapped consistently: the
training file's users and items keep its numbering, features and titles; users and items first
seen in valid or test are numbered after them, without features, and the split drops their rows
as cold (counted, as every scheme does). Every interaction remembers its part
(``Interactions.part``). A held-out (user, item) pair that training also has, or that is in both
valid and test, would be masked out of the evaluation without a word: it is an error naming
both files and lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsearch.data.dataset import GIVEN_PARTS, Dataset, Feature, Interactions
from recsearch.data.readers import _FORMATS, _GROUPLENS
from recsearch.errors import DataError


def read_given(train: Mapping[str, Any], valid: Mapping[str, Any], test: Mapping[str, Any]) -> Dataset:
    """One dataset of the three parts' interactions, each row marked with its part."""
    from recsearch.data import instantiate_source

    sources = dict(zip(GIVEN_PARTS, (train, valid, test), strict=True))
    parts = {name: instantiate_source(source, f"data.source.{name}") for name, source in sources.items()}
    where = {name: _rows_at(source) for name, source in sources.items()}
    explicit = {name: part.explicit for name, part in parts.items()}
    if len(set(explicit.values())) > 1:
        has = ", ".join(f"{where[n][0]} {'has' if e else 'has no'} ratings" for n, e in explicit.items())
        raise DataError(f"the given split's files disagree: {has}; give all three a rating column or none")
    first = parts["train"]
    user_ids, users = _merged_ids([p.user_ids for p in parts.values()])
    item_ids, items = _merged_ids([p.item_ids for p in parts.values()])
    rows = [(users[code][p.interactions.user], items[code][p.interactions.item], p.interactions.rating,
             p.interactions.timestamp, np.full(len(p.interactions), code, dtype=np.int8))
            for code, p in enumerate(parts.values())]
    merged = Interactions(*(np.concatenate(column) for column in zip(*rows, strict=True)))
    _check_disjoint(merged, len(item_ids), [len(p.interactions) for p in parts.values()], where)
    new_users, new_items = len(user_ids) - first.n_users, len(item_ids) - first.n_items
    titles = first.item_titles
    return Dataset(
        name=first.name,
        interactions=merged,
        user_ids=user_ids,
        item_ids=item_ids,
        user_features={k: _with_unknown(f, new_users) for k, f in first.user_features.items()},
        item_features={k: _with_unknown(f, new_items) for k, f in first.item_features.items()},
        item_titles=None if titles is None else np.concatenate([titles, np.full(new_items, "", dtype=titles.dtype)]),
        explicit=first.explicit,
    )


def _merged_ids(ids: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """All raw ids, the first array's in its order and then new ones as they appear, and each
    array's positions in them."""
    merged = pd.Index(ids[0])
    for other in ids[1:]:
        merged = merged.append(pd.Index(other).difference(merged, sort=False))
    return np.asarray(merged, dtype=str), [merged.get_indexer(other) for other in ids]


def _check_disjoint(inter: Interactions, n_items: int, sizes: list[int], where: dict[str, tuple[str, int | None]]
                    ) -> None:
    """No held-out pair in training, none in both valid and test."""
    key = inter.user * n_items + inter.item
    starts = np.concatenate([[0], np.cumsum(sizes)])
    names = list(GIVEN_PARTS)
    for held, earlier in ((1, 0), (2, 0), (2, 1)):
        rows = np.arange(starts[held], starts[held + 1])
        earlier_keys = key[starts[earlier]:starts[earlier + 1]]
        clash = rows[np.isin(key[rows], earlier_keys)]
        if len(clash):
            row = int(clash[0])
            other = int(np.flatnonzero(earlier_keys == key[row])[0])
            raise DataError(f"{_place(where[names[held]], row - starts[held])}: the pair of this row is also in "
                            f"{_place(where[names[earlier]], other)}; a held-out interaction must be in one part "
                            "only (the evaluation would mask it)")


def _rows_at(source: Mapping[str, Any]) -> tuple[str, int | None]:
    """The interaction file a source config reads and the file line of its first row (None:
    rows are counted, as in Parquet or a generator), so that a row's error can name its line."""
    reader = str(source.get("_target_", "")).rsplit(".", 1)[-1]
    if reader == "read_atomic":
        return str(Path(source["directory"]) / f"{source['name']}.inter"), 2
    if reader == "read_grouplens":
        return str(Path(source["directory"]) / _GROUPLENS[source["layout"]][3][0]), 1
    if reader == "read_table":
        path = Path(source["path"])
        parquet = (source.get("format") or _FORMATS.get(path.suffix.lower())) == "parquet"
        return str(path), None if parquet else 2
    return str(source.get("path") or source.get("directory") or source.get("_target_")), None


def _place(where: tuple[str, int | None], row: int) -> str:
    path, first_line = where
    return f"{path}: row {row + 1}" if first_line is None else f"{path}: line {first_line + row}"


def _with_unknown(feature: Feature, n_new: int) -> Feature:
    """The feature with ``n_new`` more entities, each unknown."""
    offsets = np.concatenate([feature.offsets, feature.offsets[-1] + np.arange(1, n_new + 1)])
    values = np.concatenate([feature.values, np.zeros(n_new, dtype=np.int64)])
    return Feature(feature.vocabulary, offsets, values, feature.multi)
