"""``data.split.scheme=given``: a split read from three files, ids mapped across them, and its
errors naming the file and the line."""

from __future__ import annotations

import numpy as np
import pytest

from recsearch.data import check_config, load_split
from recsearch.errors import ConfigError, DataError

HEADER = "user,item,rating,time\n"
TRAIN = "u1,a,5,1\nu1,b,4,2\nu2,a,3,3\nu2,c,5,4\nu3,b,2,5\nu3,c,4,6\n"
VALID = "u1,c,4,7\nu2,b,5,8\n"
TEST = "u3,a,1,9\nu2,d,5,10\nu4,a,5,11\n"  # item d and user u4 never trained: cold


def table(path) -> dict:
    return {"_target_": "recsearch.data.readers.read_table", "path": str(path),
            "columns": {"user": "user", "item": "item", "rating": "rating", "timestamp": "time"}}


def given(tmp_path, train=TRAIN, valid=VALID, test=TEST, **split) -> dict:
    parts = {}
    for name, rows in (("train", train), ("valid", valid), ("test", test)):
        (tmp_path / f"{name}.csv").write_text(HEADER + rows)
        parts[name] = table(tmp_path / f"{name}.csv")
    return {"name": "mine", "source": {"_target_": "recsearch.data.given.read_given", **parts},
            "split": {"scheme": "given", **split}}


def raw(split, part) -> set[tuple[str, str]]:
    inter = split.train.interactions if part == "train" else getattr(split, part)
    return {(split.train.user_ids[u], split.train.item_ids[i]) for u, i in zip(inter.user, inter.item, strict=True)}


def test_the_three_files_are_the_three_parts_with_one_id_map(tmp_path):
    result = load_split(given(tmp_path), seed=0)
    assert result.scheme == "given"
    assert raw(result, "train") == {("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"), ("u3", "b"), ("u3", "c")}
    assert raw(result, "valid") == {("u1", "c"), ("u2", "b")}
    assert raw(result, "test") == {("u3", "a")}  # u2-d and u4-a cannot be scored: dropped as cold
    assert list(result.train.user_ids) == ["u1", "u2", "u3", "u4"] and list(result.train.item_ids) == ["a", "b", "c", "d"]
    assert result.train.interactions.part is None, "the parts are split; the training data carries none"
    assert result.test.rating.tolist() == [1.0] and result.train.explicit


def test_the_split_counts_cold_rows_and_ignores_seed_and_ratios(tmp_path):
    from recsearch.data import prepare

    prepared = prepare(given(tmp_path, ratios=[0.5, 0.25, 0.25]), seed=1)
    assert prepared.dropped["test_cold_users"] == 1 and prepared.dropped["test_cold_items"] == 1
    again = load_split(given(tmp_path), seed=7)
    assert raw(again, "test") == raw(prepared.split, "test")


def test_a_malformed_row_names_its_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"valid.csv: line 3, column 3 \(rating\): expected a number for the rating, "
                                        "got 'great'"):
        load_split(given(tmp_path, valid="u1,c,4,7\nu2,b,great,8\n"), seed=0)


def test_a_held_out_pair_in_training_names_both_files_and_lines(tmp_path):
    with pytest.raises(DataError, match=r"test.csv: line 3: the pair of this row is also in .*train.csv: line 5"):
        load_split(given(tmp_path, test="u3,a,1,9\nu2,c,5,10\n"), seed=0)
    with pytest.raises(DataError, match=r"test.csv: line 2: the pair of this row is also in .*valid.csv: line 3"):
        load_split(given(tmp_path, test="u2,b,1,9\n"), seed=0)


def test_files_that_disagree_on_ratings_are_refused(tmp_path):
    cfg = given(tmp_path)
    del cfg["source"]["test"]["columns"]["rating"]
    with pytest.raises(DataError, match=r"train.csv has ratings, .*valid.csv has ratings, .*test.csv has no ratings"):
        load_split(cfg, seed=0)


def test_parts_and_schemes_are_checked_before_reading(tmp_path):
    cfg = given(tmp_path)
    cfg["source"]["valid"]["colums"] = cfg["source"]["valid"].pop("columns")
    with pytest.raises(ConfigError, match="data.source.valid.colums: unknown key"):
        check_config(cfg)
    del cfg["source"]["valid"]
    with pytest.raises(ConfigError, match="data.source.valid: missing"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="use data.split.scheme=given"):
        load_split({**given(tmp_path), "split": {"scheme": "random"}}, seed=0)
    one_file = {"name": "one", "source": table(tmp_path / "train.csv"), "split": {"scheme": "given"}}
    with pytest.raises(ConfigError, match="scheme=given takes the parts of a dataset read as three files"):
        load_split(one_file, seed=0)


def test_recboles_atomic_files_reproduce_a_split(tmp_path, ml100k_dir):
    """ml-100k's random split written as <name>.train/.valid/.test.inter and read back with
    conf/data/given.yaml: the same interactions in the same parts."""
    from recsearch.config import load_config, to_container

    original = load_split(to_container(load_config(["data=ml-100k", f"data_root={ml100k_dir.parent}"]).data), seed=42)
    folder = tmp_path / "ml-100k-given"
    folder.mkdir()
    for part in ("train", "valid", "test"):
        inter = original.train.interactions if part == "train" else getattr(original, part)
        lines = [f"{original.train.user_ids[u]}\t{original.train.item_ids[i]}\t{r:g}\t{t}"
                 for u, i, r, t in zip(inter.user, inter.item, inter.rating, inter.timestamp, strict=True)]
        (folder / f"ml-100k.{part}.inter").write_text(
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "\n".join(lines) + "\n")
    cfg = to_container(load_config(["data=given", f"data_root={tmp_path}"]).data)
    result = load_split(cfg, seed=0)
    for part in ("train", "valid", "test"):
        assert raw(result, part) == raw(original, part), part
    assert np.array_equal(np.sort(result.test.rating), np.sort(original.test.rating))
