"""Readers that turn raw interaction files into a :class:`Dataset` with contiguous ids.

Three entry points, each usable as a ``data.source._target_``:

* :func:`read_atomic` - RecBole atomic files (``<name>.inter``, ``.user``, ``.item``);
* :func:`read_grouplens` - the original MovieLens layouts (ml-100k ``u.data``, ml-1m ``*.dat``);
* :func:`read_table` - any CSV/TSV/Parquet file with a column mapping from the config.

(``recsearch.data.given.read_given`` reads a split the user brings as three files, each with
one of these.)

Files are parsed by pandas' C parser (ids and text as strings, ratings and timestamps as
numbers), then checked with vectorised numpy; only when a check fails is the first bad row
located, so that the :class:`DataError` names the file, the line, the column and what was
expected. Contiguous ids
follow the order of first appearance in the interaction file; users/items that have a feature
row but no interaction (profiles, for cold start) come after them, counted and logged (logger
``recsearch.data``). Nothing is dropped silently; every malformed row is an error.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from recsearch.data.dataset import UNKNOWN, Dataset, Feature, Interactions
from recsearch.errors import ConfigError, DataError

logger = logging.getLogger("recsearch.data")

# MovieLens 1M's age groups; ML-100K's exact ages are bucketed into the same ranges.
AGE_EDGES = (18, 25, 35, 45, 50, 56)
MOVIELENS_BINS = {"age": AGE_EDGES, "release_year": 10}  # release years bucketed by decade
ML_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
             "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
             "Romance", "Sci-Fi", "Thriller", "War", "Western")  # u.item's 19 flag columns, in order
ML1M_OCCUPATIONS = ("other", "academic/educator", "artist", "clerical/admin", "college/grad student",
                    "customer service", "doctor/health care", "executive/managerial", "farmer",
                    "homemaker", "K-12 student", "lawyer", "programmer", "retired", "sales/marketing",
                    "scientist", "self-employed", "technician/engineer", "tradesman/craftsman",
                    "unemployed", "writer")  # users.dat occupation codes 0..20
_YEAR_IN_TITLE = r"\((\d{4})\)\s*$"  # ml-1m titles end with "(1995)"


# -- locating errors ---------------------------------------------------------------------------
class _Source:
    """A parsed table and where its rows came from, to phrase errors as file:line:column."""

    def __init__(self, path: Path, frame: pd.DataFrame, first_line: int | None, labels: Sequence[str]):
        self.path = path
        self.frame = frame
        self.first_line = first_line  # file line of row 0; None for Parquet (rows are counted)
        self.labels = list(labels)  # column names as the file spells them

    def where(self, row: int, column: str | None = None) -> str:
        place = f"row {row + 1}" if self.first_line is None else f"line {self.first_line + row}"
        if column is not None:
            index = list(self.frame.columns).index(column)
            place += f", column {index + 1} ({self.labels[index]})"
        return f"{self.path}: {place}"

    def ids(self, column: str, what: str) -> np.ndarray:
        """Raw ids as strings; an empty cell is an error."""
        values = self.frame[column]
        missing = values.isna().to_numpy()
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise DataError(f"{self.where(row, column)}: empty {what} id (expected a {what} id in every row)")
        return values.astype(str).to_numpy(dtype=object)

    def numbers(self, column: str, what: str, required: bool = True) -> np.ndarray:
        """Finite float64 values; missing cells are NaN when not ``required``."""
        raw = self.frame[column]
        if not pd.api.types.is_numeric_dtype(raw):  # the parser met text: find where
            raw = raw.where(raw.isna(), raw.astype(str).str.strip())
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) & (raw.notna().to_numpy() | required)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            got = raw.iloc[row]
            got = "an empty cell" if pd.isna(got) else repr(got)
            raise DataError(f"{self.where(row, column)}: expected a number for {what}, got {got}")
        return values

    def timestamps(self, column: str) -> np.ndarray:
        """Unix seconds from numbers, datetime columns or ISO-8601 date strings."""
        raw = self.frame[column]
        if pd.api.types.is_datetime64_any_dtype(raw):
            parsed = pd.to_datetime(raw, utc=True)
        elif pd.api.types.is_numeric_dtype(raw):
            return self._unix_seconds(column)
        else:
            first = raw.dropna()
            if first.empty or pd.notna(pd.to_numeric(first.iloc[:1], errors="coerce").iloc[0]):
                return self._unix_seconds(column)
            parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="ISO8601")
        bad = parsed.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{self.where(row, column)}: expected a timestamp (Unix seconds or an "
                            f"ISO-8601 date), got {raw.iloc[row]!r}")
        return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy().astype(np.int64)

    def _unix_seconds(self, column: str) -> np.ndarray:
        """Numeric timestamps as int64 seconds; one beyond int64 would wrap, so it is an error."""
        seconds = np.floor(self.numbers(column, "the timestamp"))
        beyond = np.abs(seconds) >= 2.0**63
        if beyond.any():
            row = int(np.flatnonzero(beyond)[0])
            raise DataError(f"{self.where(row, column)}: timestamp {seconds[row]:g} is out of range "
                            "(expected Unix seconds within a 64-bit integer)")
        return seconds.astype(np.int64)

    def require(self, columns: Sequence[str], hint: str = "") -> None:
        missing = [c for c in columns if c not in self.frame.columns]
        if missing:
            where = "the file" if self.first_line is None else "the header (line 1)"
            raise DataError(f"{self.path}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"{where} has {', '.join(map(repr, self.labels))}{hint}")


def _read_delimited(path: Path, sep: str, *, header: bool, n_columns: int | None = None,
                    encoding: str = "utf-8", quoting: int = csv.QUOTE_NONE,
                    numeric: Collection[str | int] = ()) -> pd.DataFrame:
    """Cells as strings (NaN when empty), except the ``numeric`` columns (header names, or
    positions without a header), which the C parser reads as float64 - several times faster
    than converting strings. When one of them holds text the file is read again as strings, so
    that :meth:`_Source.numbers` can say where. Blank lines are kept as empty rows: row ``r`` is
    file line ``r + 1`` (``r + 2`` after a header). Multi-character separators (``::``) are
    swapped for a control character so that the C parser still applies."""
    if header:
        _check_header(path, sep, encoding, quoting)
        dtype: Mapping = defaultdict(lambda: str, {c: "float64" for c in numeric})
    else:  # pandas ignores int keys of a defaultdict: spell every expected column out
        dtype = {i: "float64" if i in numeric else str for i in range(n_columns or 0)} or str
    try:
        source: Path | io.StringIO = path
        if len(sep) > 1:
            source = io.StringIO(path.read_text(encoding=encoding).replace(sep, "\x1f"))
        frame = pd.read_csv(source, sep="\x1f" if len(sep) > 1 else sep, header=0 if header else None,
                            dtype=dtype, keep_default_na=False, na_values=[""], quoting=quoting,
                            skip_blank_lines=False, encoding=encoding, engine="c")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if not found:
            raise DataError(f"{path}: cannot be parsed as {sep!r}-separated text: {err}") from None
        expected, line, saw = found.groups()
        raise DataError(f"{path}: line {line}: expected {expected} fields separated by {sep!r}, "
                        f"found {saw}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid {encoding} text (byte {err.start}); set the encoding") from None
    except ValueError:  # text in a numeric column
        if not numeric:
            raise
        return _read_delimited(path, sep, header=header, n_columns=n_columns, encoding=encoding, quoting=quoting)
    if frame.empty:
        raise DataError(f"{path}: {'no rows after the header' if header else 'the file is empty'}")
    if n_columns is not None and frame.shape[1] != n_columns:
        first = ",".join(str(c) for c in frame.iloc[0].tolist())
        raise DataError(f"{path}: line 1: expected {n_columns} fields separated by {sep!r}, found "
                        f"{frame.shape[1]}{_separator_hint(first, sep)}")
    return frame


def _check_header(path: Path, sep: str, encoding: str, quoting: int) -> None:
    """A column named twice makes every later lookup ambiguous (pandas would rename the second)."""
    with path.open(encoding=encoding, errors="replace", newline="") as file:
        line = file.readline().rstrip("\r\n")
    names = next(csv.reader([line.replace(sep, "\x1f")], delimiter="\x1f", quoting=quoting), [])
    seen: dict[str, int] = {}
    for index, name in enumerate(names, 1):
        if name in seen:
            raise DataError(f"{path}: line 1, column {index}: column {name!r} appears a second time "
                            f"(first in column {seen[name]})")
        seen[name] = index


def _separator_hint(line: str, sep: str) -> str:
    """Explain a single-column parse: the usual cause is a file split by another character."""
    for other in ("\t", ",", ";", "|", "::"):
        if other != sep and other in line:
            return f" (the line contains {other!r}: is the file {other!r}-separated?)"
    return ""


def _one_column_hint(source: _Source, sep: str) -> str:
    if source.frame.shape[1] != 1:
        return ""
    return f" - the file was read as a single column{_separator_hint(source.labels[0], sep)}"


# -- features ----------------------------------------------------------------------------------
def _align(dataset: Dataset, what: str, ids: np.ndarray, source: _Source) -> np.ndarray:
    """Row of ``source`` for each of the dataset's users (``what``) or items, -1 when absent.
    Rows of entities without interactions are not lost: those entities are appended to the
    dataset, known by their features only (profiles; ``preprocess(keep_profiles=True)`` keeps
    them), counted and logged. A repeated id is an error (which row would be right?)."""
    repeated = pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataError(f"{source.where(row)}: {what} id {ids[row]!r} appears a second time")
    attribute = f"{what}_ids"
    index = pd.Index(getattr(dataset, attribute))
    new = np.asarray(ids[index.get_indexer(ids) < 0], dtype=str)
    if len(new):
        logger.info("%s: kept %d %s(s) without interactions, known by their features only", source.path,
                    len(new), what)
        setattr(dataset, attribute, np.concatenate([getattr(dataset, attribute).astype(str), new]))
        index = pd.Index(getattr(dataset, attribute))
    position = index.get_indexer(ids)
    rows = np.full(len(index), -1, dtype=np.int64)
    rows[position] = np.arange(len(ids))
    absent = int((rows < 0).sum())
    if absent:
        logger.warning("%s: %d %s(s) with interactions have no row here; their features are %s",
                       source.path, absent, what, UNKNOWN)
    return rows


def _gather(values: pd.Series, rows: np.ndarray) -> pd.Series:
    """``values`` at ``rows`` per entity, NaN where the entity has no row."""
    taken = values.iloc[np.maximum(rows, 0)].reset_index(drop=True)
    return taken.where(pd.Series(rows >= 0))


def _single(values: pd.Series) -> Feature:
    """A single-valued categorical feature from one string per entity (NaN = unknown)."""
    present = values.notna().to_numpy()
    vocabulary, codes = np.unique(values[present].astype(str).to_numpy(dtype=str), return_inverse=True)
    full = np.zeros(len(values), dtype=np.int64)
    full[present] = codes + 1
    return Feature.from_codes(full, [UNKNOWN, *vocabulary.tolist()])


def _multi(n_entities: int, entity: np.ndarray, labels: np.ndarray) -> Feature:
    """A multi-valued feature from (entity, label) pairs; entities without pairs get UNKNOWN."""
    vocabulary, codes = np.unique(labels.astype(str), return_inverse=True)
    empty = np.setdiff1d(np.arange(n_entities), entity)
    entity = np.concatenate([entity, empty])
    codes = np.concatenate([codes + 1, np.zeros(len(empty), dtype=np.int64)])
    order = np.argsort(entity, kind="stable")
    offsets = np.zeros(n_entities + 1, dtype=np.int64)
    np.cumsum(np.bincount(entity, minlength=n_entities), out=offsets[1:])
    return Feature(np.array([UNKNOWN, *vocabulary.tolist()]), offsets, codes[order].astype(np.int64), True)


def _split_multi(values: pd.Series, sep: str) -> Feature:
    """A multi-valued feature from one ``sep``-joined string per entity."""
    parts = values.fillna("").astype(str).str.split(sep, regex=False).explode()
    keep = (parts != "").to_numpy()
    return _multi(len(values), parts.index.to_numpy()[keep], parts.to_numpy(dtype=object)[keep])


def _bucket_labels(numbers: np.ndarray, spec: int | Sequence[float]) -> pd.Series:
    """Ranges for numbers: an int is a bin width (10 -> "1990-1999"), a list holds bin edges
    ([18, 25] -> "<18", "18-24", "25+"). NaN stays missing."""
    present = np.isfinite(numbers)
    labels = np.full(len(numbers), None, dtype=object)
    if isinstance(spec, (int, np.integer)):
        low = (np.floor(numbers[present] / spec) * spec).astype(np.int64)
        labels[present] = np.char.add(np.char.add(low.astype(str), "-"), (low + spec - 1).astype(str))
    else:
        edges = [float(e) for e in spec]
        names = [f"<{edges[0]:g}"] + [f"{lo:g}-{hi - 1:g}" for lo, hi in pairwise(edges)] + [f"{edges[-1]:g}+"]
        labels[present] = np.array(names, dtype=object)[np.searchsorted(edges, numbers[present], side="right")]
    return pd.Series(labels, dtype=object).where(pd.Series(present))


def _aligned_numbers(source: _Source, column: str, rows: np.ndarray) -> np.ndarray:
    """A numeric feature column per entity. It only describes entities, so a value that is not
    a number (RecBole's ML-100K spells one missing year "unkonwn") becomes unknown, logged."""
    raw = source.frame[column]
    numbers = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    bad = ~np.isfinite(numbers) & raw.notna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        logger.info("%s: %d value(s) that are not numbers taken as %s, the first %r",
                    source.where(row, column), int(bad.sum()), UNKNOWN, raw.iloc[row])
    numbers[bad] = np.nan
    return np.where(rows >= 0, numbers[np.maximum(rows, 0)], np.nan)


# -- interactions ------------------------------------------------------------------------------
def _assemble(name: str, source: _Source, user: str, item: str, rating: str | None,
              timestamp: str | None) -> Dataset:
    """Interactions with contiguous ids in order of first appearance. Without a rating column
    every interaction is an implicit 1.0; without timestamps the row order is the clock."""
    users, user_ids = pd.factorize(source.ids(user, "user"))
    items, item_ids = pd.factorize(source.ids(item, "item"))
    ratings = source.numbers(rating, "the rating") if rating else np.ones(len(users))
    times = source.timestamps(timestamp) if timestamp else np.arange(len(users))
    logger.info("%s: %d users, %d items, %d interactions", source.path, len(user_ids), len(item_ids), len(users))
    return Dataset(name=name, interactions=Interactions(users, items, ratings, times),
                   user_ids=np.asarray(user_ids, dtype=str), item_ids=np.asarray(item_ids, dtype=str),
                   explicit=rating is not None)


def _missing_files(directory: Path, expected: Sequence[str], fetch: str = "") -> DataError:
    if not directory.is_dir():
        return DataError(f"{directory}: no such directory (expected {', '.join(expected)} in it){fetch}")
    found = sorted(p.name for p in directory.iterdir())
    hint = ""
    if any(n.endswith(".inter") for n in found):
        hint = "; it holds RecBole atomic files: use recsearch.data.readers.read_atomic"
    elif "u.data" in found or "ratings.dat" in found:
        hint = "; it holds a GroupLens layout: use recsearch.data.readers.read_grouplens"
    return DataError(f"{directory}: expected {', '.join(expected)}, found "
                     f"{', '.join(found[:10]) or 'nothing'}{'...' if len(found) > 10 else ''}{hint}")


# -- RecBole atomic files ----------------------------------------------------------------------
ATOMIC_TYPES = ("token", "float", "token_seq", "float_seq")


def _read_atomic_file(path: Path) -> tuple[_Source, dict[str, str]]:
    """An atomic file: tab-separated, header cells ``name:type``; returns the table (columns
    named by field) and each field's type."""
    with path.open(encoding="utf-8", errors="replace") as file:
        labels = file.readline().rstrip("\r\n").split("\t")
    if labels == [""]:
        raise DataError(f"{path}: the file is empty (expected a header line of name:type cells)")
    types = {}
    for index, label in enumerate(labels):
        field, colon, kind = label.partition(":")
        if not colon or kind not in ATOMIC_TYPES:
            hint = _separator_hint(label, "\t") if len(labels) == 1 else ""
            raise DataError(f"{path}: line 1, column {index + 1}: expected a header cell 'name:type' with "
                            f"type {', '.join(ATOMIC_TYPES)}; got {label!r}{hint}")
        if field in types:
            first = list(types).index(field) + 1
            raise DataError(f"{path}: line 1, column {index + 1}: field {field!r} appears a second time "
                            f"(first in column {first})")
        types[field] = kind
    frame = _read_delimited(path, "\t", header=True, numeric=[c for c in labels if c.endswith(":float")])
    frame.columns = list(types)
    return _Source(path, frame, 2, labels), types


def read_atomic(directory: str | Path, name: str, *, title_field: str | None = None, exclude: Sequence[str] = (),
                bins: Mapping[str, int | Sequence[float]] | None = None,
                rename: Mapping[str, str] | None = None) -> Dataset:
    """RecBole atomic files ``<name>.inter`` (required: ``user_id``, ``item_id``; optional
    ``rating``, ``timestamp``), ``<name>.user`` and ``<name>.item`` (optional).

    Every other field of the user/item files becomes a categorical feature: ``token`` single-
    valued, ``token_seq`` multi-valued (space-separated); fields named in ``bins`` are numbers
    bucketed into ranges (an int: the width, e.g. 10 for decades; a list: the edges); ``float``
    fields without bins and fields in ``exclude`` are skipped. ``title_field`` of the item file
    gives the titles; ``rename`` maps field names to feature names. What a dataset needs of
    these is its config's business (``conf/data/ml-100k.yaml`` sets MovieLens's)."""
    directory = Path(directory)
    bins, rename = bins or {}, rename or {}
    path = directory / f"{name}.inter"
    if not path.is_file():
        raise _missing_files(directory, [path.name])
    source, _ = _read_atomic_file(path)
    source.require(["user_id", "item_id"], _one_column_hint(source, "\t"))
    columns = source.frame.columns
    dataset = _assemble(name, source, "user_id", "item_id", "rating" if "rating" in columns else None,
                        "timestamp" if "timestamp" in columns else None)
    for kind in ("user", "item"):
        path = directory / f"{name}.{kind}"
        if not path.is_file():
            continue
        source, types = _read_atomic_file(path)
        source.require([f"{kind}_id"])
        rows = _align(dataset, kind, source.ids(f"{kind}_id", kind), source)
        features = dataset.user_features if kind == "user" else dataset.item_features
        for field, field_type in types.items():
            if field == f"{kind}_id" or field in exclude:
                continue
            if kind == "item" and field == title_field:
                dataset.item_titles = _gather(source.frame[field], rows).fillna("").to_numpy(dtype=str)
            elif field in bins:
                numbers = _aligned_numbers(source, field, rows)
                features[rename.get(field, field)] = _single(_bucket_labels(numbers, bins[field]))
            elif field_type == "token":
                features[rename.get(field, field)] = _single(_gather(source.frame[field], rows))
            elif field_type == "token_seq":
                features[rename.get(field, field)] = _split_multi(_gather(source.frame[field], rows), " ")
            else:
                logger.info("%s: skipped numeric field %r (give it bins to use it as a feature)", path, field)
    return dataset


# -- GroupLens layouts ---------------------------------------------------------------------------
_GROUPLENS = {  # layout -> separator, encoding, files (ratings, items, users)
    "ml-100k": ("\t", "|", "latin-1", ("u.data", "u.item", "u.user")),
    "ml-1m": ("::", "::", "latin-1", ("ratings.dat", "movies.dat", "users.dat")),
}


def read_grouplens(directory: str | Path, layout: str) -> Dataset:
    """The original MovieLens distributions, without headers: ``ml-100k`` (``u.data`` tab-
    separated user item rating timestamp; ``u.item`` and ``u.user`` ``|``-separated) or ``ml-1m``
    (``ratings.dat``, ``movies.dat``, ``users.dat``, ``::``-separated), latin-1 text. Features
    match :func:`read_atomic`'s on ML-100K: user age range, gender, occupation; item genre
    (multi-valued) and release decade; titles as written (with the year)."""
    if layout not in _GROUPLENS:
        raise ConfigError(f"unknown GroupLens layout {layout!r}; known: {', '.join(_GROUPLENS)}")
    directory = Path(directory)
    rating_sep, sep, encoding, files = _GROUPLENS[layout]
    if not (directory / files[0]).is_file():
        raise _missing_files(directory, files, f"; recsearch data fetch {layout} --dest {directory.parent} downloads it")
    labels = ["user id", "item id", "rating", "timestamp"]
    frame = _read_delimited(directory / files[0], rating_sep, header=False, n_columns=4, encoding=encoding,
                            numeric=(2, 3))
    frame.columns = ["user", "item", "rating", "timestamp"]
    dataset = _assemble(layout, _Source(directory / files[0], frame, 1, labels), "user", "item", "rating", "timestamp")
    if (directory / files[1]).is_file():
        _grouplens_items(dataset, directory / files[1], layout, sep, encoding)
    if (directory / files[2]).is_file():
        _grouplens_users(dataset, directory / files[2], layout, sep, encoding)
    return dataset


def _grouplens_items(dataset: Dataset, path: Path, layout: str, sep: str, encoding: str) -> None:
    if layout == "ml-100k":  # id|title|release date|video date|IMDb URL|19 genre flags
        labels = ["movie id", "title", "release date", "video release date", "IMDb URL", *ML_GENRES]
        frame = _read_delimited(path, sep, header=False, n_columns=len(labels), encoding=encoding,
                                numeric=range(5, len(labels)))
        frame.columns = ["item", "title", "date", "video", "url", *ML_GENRES]
        source = _Source(path, frame, 1, labels)
        flags = np.stack([source.numbers(g, f"the {g!r} genre flag") for g in ML_GENRES], axis=1)
        bad = (flags != 0) & (flags != 1)
        if bad.any():
            row, col = map(int, np.argwhere(bad)[0])
            raise DataError(f"{source.where(row, ML_GENRES[col])}: expected a genre flag 0 or 1, got {flags[row, col]:g}")
        frame["year"] = frame["date"].str[-4:]
    else:  # id::title (year)::Genre|Genre
        labels = ["movie id", "title", "genres"]
        frame = _read_delimited(path, sep, header=False, n_columns=len(labels), encoding=encoding)
        frame.columns = ["item", "title", "genres"]
        frame["year"] = frame["title"].str.extract(_YEAR_IN_TITLE, expand=False)
        source = _Source(path, frame, 1, labels + ["year"])
    rows = _align(dataset, "item", source.ids("item", "item"), source)
    dataset.item_titles = _gather(frame["title"], rows).fillna("").to_numpy(dtype=str)
    if layout == "ml-100k":
        entity, genre = np.nonzero(np.where(rows[:, None] >= 0, flags[np.maximum(rows, 0)], 0))
        dataset.item_features["genre"] = _multi(dataset.n_items, entity, np.array(ML_GENRES)[genre])
    else:
        dataset.item_features["genre"] = _split_multi(_gather(frame["genres"], rows), "|")
    years = _aligned_numbers(source, "year", rows)
    dataset.item_features["release_year"] = _single(_bucket_labels(years, MOVIELENS_BINS["release_year"]))


def _grouplens_users(dataset: Dataset, path: Path, layout: str, sep: str, encoding: str) -> None:
    if layout == "ml-100k":  # id|age|gender|occupation|zip
        labels = ["user id", "age", "gender", "occupation", "zip code"]
        columns = ["user", "age", "gender", "occupation", "zip"]
    else:  # id::gender::age group::occupation code::zip
        labels = ["user id", "gender", "age", "occupation", "zip-code"]
        columns = ["user", "gender", "age", "occupation", "zip"]
    frame = _read_delimited(path, sep, header=False, n_columns=len(labels), encoding=encoding,
                            numeric=(columns.index("age"), *((3,) if layout == "ml-1m" else ())))
    frame.columns = columns
    source = _Source(path, frame, 1, labels)
    rows = _align(dataset, "user", source.ids("user", "user"), source)
    ages = _aligned_numbers(source, "age", rows)
    dataset.user_features["age"] = _single(_bucket_labels(ages, AGE_EDGES))
    dataset.user_features["gender"] = _single(_gather(frame["gender"], rows))
    occupation = frame["occupation"]
    if layout == "ml-1m":  # codes 0..20 -> the names in the ml-1m README
        codes = source.numbers("occupation", "the occupation code", required=False)
        bad = np.isfinite(codes) & ~np.isin(codes, np.arange(len(ML1M_OCCUPATIONS)))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source.where(row, 'occupation')}: expected an occupation code 0-20, got {codes[row]:g}")
        names = np.array(ML1M_OCCUPATIONS, dtype=object)[np.nan_to_num(codes).astype(np.int64)]
        occupation = pd.Series(names).where(pd.Series(np.isfinite(codes)))
    dataset.user_features["occupation"] = _single(_gather(occupation, rows))


# -- any table ---------------------------------------------------------------------------------
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv"}


def read_table(path: str | Path, columns: Mapping[str, str], *, sep: str | None = None,
               format: str | None = None, name: str | None = None, encoding: str = "utf-8",
               item_title: str | None = None, item_features: Sequence[str] = (),
               user_features: Sequence[str] = (), feature_sep: str | None = "|") -> Dataset:
    """One interaction table (CSV, TSV or Parquet, with a header) and a column mapping
    ``{user: ..., item: ..., rating: ..., timestamp: ...}`` (rating and timestamp optional).

    ``format`` defaults from the suffix (.csv, .tsv, .parquet); ``sep`` overrides the
    separator of text formats. Timestamps may be Unix seconds or ISO-8601 dates. Optional
    denormalised columns: ``item_title``, ``item_features``/``user_features`` (categorical,
    first row of each entity wins; values joined by ``feature_sep`` become multi-valued)."""
    path = Path(path)
    unknown = set(columns) - {"user", "item", "rating", "timestamp"}
    if unknown or not {"user", "item"} <= set(columns):
        raise ConfigError(f"read_table columns must map user and item (and optionally rating, timestamp) "
                          f"to column names; got keys {sorted(columns)}")
    format = format or _FORMATS.get(path.suffix.lower()) or ("csv" if sep else None)
    if format not in ("csv", "tsv", "parquet"):
        raise ConfigError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; set format "
                          "(csv, tsv or parquet) or sep")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    wanted = list(dict.fromkeys([*columns.values(), *([item_title] if item_title else []),
                                 *item_features, *user_features]))
    if format == "parquet":
        source = _read_parquet(path, wanted)
    else:
        sep = sep or ("," if format == "csv" else "\t")
        numeric = [columns[k] for k in ("rating", "timestamp") if k in columns]
        frame = _read_delimited(path, sep, header=True, encoding=encoding, quoting=csv.QUOTE_MINIMAL,
                                numeric=numeric)
        source = _Source(path, frame, 2, [str(c) for c in frame.columns])
        source.require(wanted, _one_column_hint(source, sep))
    dataset = _assemble(name or path.name.split(".")[0], source, columns["user"], columns["item"],
                        columns.get("rating"), columns.get("timestamp"))
    for kind, wanted_features in (("user", user_features), ("item", item_features)):
        entity = dataset.interactions.user if kind == "user" else dataset.interactions.item
        first_rows = np.unique(entity, return_index=True)[1]  # entities are numbered by first row
        target = dataset.user_features if kind == "user" else dataset.item_features
        for column in wanted_features:
            values = source.frame[column].iloc[first_rows].reset_index(drop=True)
            multi = feature_sep is not None and values.astype(str).str.contains(feature_sep, regex=False).any()
            target[column] = _split_multi(values, feature_sep) if multi else _single(values)
    if item_title:
        first_rows = np.unique(dataset.interactions.item, return_index=True)[1]
        dataset.item_titles = source.frame[item_title].iloc[first_rows].fillna("").astype(str).to_numpy(dtype=str)
    return dataset


def _read_parquet(path: Path, wanted: list[str]) -> _Source:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file: {err}") from None
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; the file has "
                        f"{', '.join(map(repr, names))}")
    frame = pd.read_parquet(path, columns=wanted, dtype_backend="numpy_nullable")
    if frame.empty:
        raise DataError(f"{path}: the file has no rows")
    return _Source(path, frame, None, wanted)
