"""Readers: RecBole atomic files, GroupLens layouts, tables; and every bad-input message."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from recsearch.data.preprocess import preprocess
from recsearch.data.readers import ML_GENRES, read_atomic, read_grouplens, read_table
from recsearch.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def ml100k(ml100k_dir):
    """As conf/data/ml-100k.yaml reads it: the MovieLens specifics (titles, bins, the genre
    field's name, no zip codes) live there, not in the reader."""
    from recsearch.config import load_config, to_container
    from recsearch.data import load_dataset

    return load_dataset(to_container(load_config(["data=ml-100k", f"data_root={ml100k_dir.parent}"]).data))


def test_atomic_reader_defaults_are_neutral(ml100k_dir):
    plain = read_atomic(ml100k_dir, "ml-100k")
    assert plain.item_titles is None and "zip_code" in plain.user_features and "class" in plain.item_features
    assert "release_year" in plain.item_features and "age" in plain.user_features  # tokens kept as they are
    assert plain.user_features["age"].of(plain.user_index()["1"]) == ["24"]


def test_atomic_ml100k_counts_features_titles(ml100k):
    assert (ml100k.n_users, ml100k.n_items, len(ml100k.interactions)) == (943, 1682, 100_000)
    assert ml100k.explicit and set(np.unique(ml100k.interactions.rating)) == {1, 2, 3, 4, 5}
    assert ml100k.interactions.timestamp.min() > 870_000_000  # Unix seconds of 1997
    assert set(ml100k.user_features) == {"age", "gender", "occupation"}  # no zip_code
    assert set(ml100k.item_features) == {"genre", "release_year"}
    toy_story = ml100k.item_index()["1"]
    assert ml100k.item_titles[toy_story] == "Toy Story"
    assert ml100k.item_features["genre"].multi
    assert ml100k.item_features["genre"].of(toy_story) == ["Animation", "Children's", "Comedy"]
    assert ml100k.item_features["release_year"].of(toy_story) == ["1990-1999"]
    user_1 = ml100k.user_index()["1"]  # 24, M, technician in ml-100k.user
    assert [ml100k.user_features[f].of(user_1)[0] for f in ("age", "gender", "occupation")] == ["18-24", "M", "technician"]
    assert set(ml100k.user_features["age"].vocabulary[1:]) <= {"<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}


def _write_grouplens_100k(directory, ml100k_dir, n_rows=400):
    """A slice of ML-100K written in the original u.data / u.item / u.user layout."""
    inter = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t", nrows=n_rows, dtype=str)
    items = pd.read_csv(ml100k_dir / "ml-100k.item", sep="\t", dtype=str).set_index("item_id:token")
    users = pd.read_csv(ml100k_dir / "ml-100k.user", sep="\t", dtype=str).set_index("user_id:token")
    inter.to_csv(directory / "u.data", sep="\t", header=False, index=False)
    lines = []
    for item in inter["item_id:token"].unique():
        row = items.loc[item]
        genres = str(row["class:token_seq"]).split(" ")
        flags = "|".join("1" if g in genres else "0" for g in ML_GENRES)
        title = "Café Society (1995)" if item == inter["item_id:token"].iloc[0] else f"{row['movie_title:token_seq']} (x)"
        lines.append(f"{item}|{title}|01-Jan-{row['release_year:token']}||http://imdb/{item}|{flags}")
    (directory / "u.item").write_text("\n".join(lines) + "\n", encoding="latin-1")
    user_rows = users.loc[inter["user_id:token"].unique()].reset_index()
    user_rows.to_csv(directory / "u.user", sep="|", header=False, index=False)
    return inter


def test_grouplens_100k_layout_matches_atomic(tmp_path, ml100k_dir, ml100k):
    inter = _write_grouplens_100k(tmp_path, ml100k_dir)
    data = read_grouplens(tmp_path, "ml-100k")
    assert len(data.interactions) == len(inter) and data.n_users == inter["user_id:token"].nunique()
    np.testing.assert_array_equal(data.user_ids[data.interactions.user], inter["user_id:token"])
    np.testing.assert_array_equal(data.item_ids[data.interactions.item], inter["item_id:token"])
    np.testing.assert_array_equal(data.interactions.rating, inter["rating:float"].astype(float))
    np.testing.assert_array_equal(data.interactions.timestamp, inter["timestamp:float"].astype(np.int64))
    assert data.item_titles[0] == "Café Society (1995)"  # latin-1 decoded
    atomic_item = ml100k.item_index()
    atomic_user = ml100k.user_index()
    for i, raw in enumerate(data.item_ids):
        for feature in ("genre", "release_year"):
            assert data.item_features[feature].of(i) == ml100k.item_features[feature].of(atomic_item[raw])
    for u, raw in enumerate(data.user_ids):
        for feature in ("age", "gender", "occupation"):
            assert data.user_features[feature].of(u) == ml100k.user_features[feature].of(atomic_user[raw])


def _write_ml1m(directory, users="1::F::1::10::48067\n2::M::56::16::70072\n"):
    (directory / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (directory / "movies.dat").write_text(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
        "661::Star Wars: Episode IV - A New Hope (1977)::Action|Adventure|Sci-Fi\n", encoding="latin-1")
    (directory / "users.dat").write_text(users)


def test_grouplens_1m_layout(tmp_path):
    _write_ml1m(tmp_path)
    data = read_grouplens(tmp_path, "ml-1m")
    assert (data.n_users, data.n_items, len(data.interactions)) == (2, 2, 3)
    np.testing.assert_array_equal(data.interactions.rating, [5, 3, 4])
    star_wars = data.item_index()["661"]
    assert data.item_titles[star_wars] == "Star Wars: Episode IV - A New Hope (1977)"  # ':' inside a field
    assert data.item_features["genre"].of(star_wars) == ["Action", "Adventure", "Sci-Fi"]
    assert data.item_features["release_year"].of(star_wars) == ["1970-1979"]
    assert [data.user_features[f].of(0)[0] for f in ("age", "gender", "occupation")] == ["<18", "F", "K-12 student"]
    assert data.user_features["age"].of(1) == ["56+"] and data.user_features["occupation"].of(1) == ["self-employed"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet"])
def test_read_table_with_column_mapping(tmp_path, fmt):
    frame = pd.DataFrame({
        "uid": ["a", "b", "a", "c"], "sku": ["x", "x", "y", "z"], "stars": [4.5, 3.0, 1.0, 5.0],
        "when": ["2024-01-01T10:00:00", "2024-01-02", "2024-01-03", "2024-01-04"],
        "name": ["Film, the first", "Film, the first", "Second", "Third"],
        "tags": ["drama|war", "drama|war", "comedy", ""],
    })
    path = tmp_path / f"events.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="," if fmt == "csv" else "\t", index=False)
    data = read_table(path, {"user": "uid", "item": "sku", "rating": "stars", "timestamp": "when"},
                      item_title="name", item_features=["tags"])
    assert data.name == "events" and (data.n_users, data.n_items) == (3, 3)
    np.testing.assert_array_equal(data.user_ids, ["a", "b", "c"])
    np.testing.assert_array_equal(data.interactions.rating, [4.5, 3.0, 1.0, 5.0])
    assert data.interactions.timestamp[0] == pd.Timestamp("2024-01-01T10:00:00", tz="UTC").timestamp()
    assert data.item_titles.tolist() == ["Film, the first", "Second", "Third"]  # quoted comma kept
    assert data.item_features["tags"].of(0) == ["drama", "war"] and data.item_features["tags"].of(2) == ["<unk>"]


def test_read_table_implicit_without_rating_or_time(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("user,item\n1,007\n2,007\n1,008\n")
    data = read_table(path, {"user": "user", "item": "item"})
    assert not data.explicit and data.item_ids.tolist() == ["007", "008"]  # ids stay strings
    np.testing.assert_array_equal(data.interactions.rating, [1, 1, 1])
    np.testing.assert_array_equal(data.interactions.timestamp, [0, 1, 2])  # row order is the clock


# -- bad input: the message names file, line, column and what was expected ------------------------
def _table(tmp_path, text, name="ratings.csv", **kwargs):
    path = tmp_path / name
    path.write_text(text)
    return path, lambda: read_table(path, {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}, **kwargs)


@pytest.mark.parametrize("text, expected", [
    ("u,i,r,t\n1,2,4,100\n1,3,x,101\n", ["line 3, column 3 (r)", "expected a number for the rating", "'x'"]),
    ("u,i,r,t\n1,2,4,100\n,3,5,101\n", ["line 3, column 1 (u)", "empty user id"]),
    ("u,i,r,t\n1,2,4,100\n1,,5,101\n", ["line 3, column 2 (i)", "empty item id"]),
    ("u,i,r,t\n1,2,4,100\n1,3,5\n", ["line 3, column 4 (t)", "got an empty cell"]),
    ("u,i,r,t\n1,2,4,100\n\n1,3,5,7\n", ["line 3, column 1 (u)", "empty user id"]),  # blank lines count
    ("u,i,r,t\n1,2,4,100\n1,3,5,101,9\n", ["line 3", "expected 4 fields separated by ','", "found 5"]),
    ("u,i,r,t\n1,2,4,100\n1,3,4,yesterday\n", ["line 3, column 4 (t)", "expected a number for the timestamp"]),
    ("u,i,t\n1,2,100\n", ["missing column(s) 'r'", "'u', 'i', 't'"]),
    ("", ["the file is empty"]),
    ("u,i,r,t\n", ["no rows after the header"]),
])
def test_table_errors_name_file_line_column(tmp_path, text, expected):
    path, read = _table(tmp_path, text)
    with pytest.raises(DataError) as err:
        read()
    assert str(err.value).startswith(str(path))
    for part in expected:
        assert part in str(err.value)


def test_wrong_separator_is_explained(tmp_path):
    path, read = _table(tmp_path, "u,i,r,t\n1,2,4,100\n", name="ratings.tsv")
    with pytest.raises(DataError, match=r"read as a single column \(the line contains ','"):
        read()
    (tmp_path / "u.data").write_text("1,2,4,100\n")
    with pytest.raises(DataError, match=r"u.data: line 1: expected 4 fields separated by '\\t', found 1 .*','"):
        read_grouplens(tmp_path, "ml-100k")


def test_atomic_errors(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id\n1\t2\n")
    with pytest.raises(DataError, match=r"x.inter: line 1, column 2: expected a header cell 'name:type'"):
        read_atomic(tmp_path, "x")
    (tmp_path / "x.inter").write_text("user_id:token\trating:float\n1\t2\n")
    with pytest.raises(DataError, match=r"missing column\(s\) 'item_id'"):
        read_atomic(tmp_path, "x")
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tfour\n")
    with pytest.raises(DataError, match=r"x.inter: line 3, column 3 \(rating:float\): expected a number"):
        read_atomic(tmp_path, "x")
    (tmp_path / "x.inter").write_text("")
    with pytest.raises(DataError, match="x.inter: the file is empty"):
        read_atomic(tmp_path, "x")
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    (tmp_path / "x.user").write_text("user_id:token\tage:token\n1\t30\n1\t31\n")
    with pytest.raises(DataError, match=r"x.user: line 3: user id '1' appears a second time"):
        read_atomic(tmp_path, "x")


def test_directory_without_expected_files(tmp_path, ml100k_dir):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"expected x.inter, found notes.txt"):
        read_atomic(tmp_path, "x")
    with pytest.raises(DataError, match=r"expected u.data, u.item, u.user, found .*ml-100k.inter.*use .*read_atomic"):
        read_grouplens(ml100k_dir, "ml-100k")
    with pytest.raises(DataError, match="no such directory"):
        read_grouplens(tmp_path / "missing", "ml-1m")
    with pytest.raises(ConfigError, match="unknown GroupLens layout"):
        read_grouplens(tmp_path, "ml-20m")


def test_grouplens_field_errors(tmp_path):
    _write_ml1m(tmp_path, users="1::F::1::10::48067\n2::M::56::25::70072\n")
    with pytest.raises(DataError, match=r"users.dat: line 2, column 4 \(occupation\): expected an occupation code 0-20, got 25"):
        read_grouplens(tmp_path, "ml-1m")
    (tmp_path / "ratings.dat").write_text("1::1193::5::978300760\n1::661::5:978302109\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 2, column 3 \(rating\): expected a number for the rating, got '5:978302109'"):
        read_grouplens(tmp_path, "ml-1m")


def test_parquet_errors_name_rows(tmp_path):
    path = tmp_path / "events.parquet"
    pd.DataFrame({"u": ["1", None], "i": ["a", "b"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"events.parquet: row 2, column 1 \(u\): empty user id"):
        read_table(path, {"user": "u", "item": "i"})
    with pytest.raises(DataError, match=r"missing column\(s\) 'stars'"):
        read_table(path, {"user": "u", "item": "i", "rating": "stars"})
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(tmp_path / "junk.parquet", {"user": "u", "item": "i"})
    with pytest.raises(ConfigError, match="cannot tell the format"):
        read_table(tmp_path / "events.data", {"user": "u", "item": "i"})
    with pytest.raises(ConfigError, match="must map user and item"):
        read_table(path, {"user": "u", "itm": "i"})


def test_profiles_without_interactions_are_kept_and_missing_rows_logged(tmp_path, caplog):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\n1\t2\n3\t2\n")
    (tmp_path / "x.user").write_text("user_id:token\tgender:token\n1\tF\n9\tM\n8\tF\n")
    with caplog.at_level(logging.INFO, logger="recsearch.data"):
        data = read_atomic(tmp_path, "x")
    assert data.user_features["gender"].of(0) == ["F"] and data.user_features["gender"].of(1) == ["<unk>"]
    # users 9 and 8 have a profile and no interaction: appended, with their features
    assert data.user_ids.tolist() == ["1", "3", "9", "8"] and data.user_features["gender"].of(3) == ["F"]
    assert "kept 2 user(s) without interactions, known by their features only" in caplog.text
    assert "1 user(s) with interactions have no row here" in caplog.text
    dropped_by_default, _ = preprocess(data)
    assert dropped_by_default.user_ids.tolist() == ["1", "3"]
    kept, counts = preprocess(data, keep_profiles=True)
    assert kept.user_ids.tolist() == ["1", "3", "9", "8"] and counts["users_removed"] == 0
    assert kept.user_features["gender"].of(3) == ["F"]
