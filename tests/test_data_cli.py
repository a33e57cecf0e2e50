"""``recsearch data info`` and ``recsearch data fetch`` (the download replaced by a local file)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import pytest

from recsearch.cli import main
from recsearch.data import fetch
from recsearch.errors import DataError


def test_data_info_ml100k(ml100k_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECSEARCH_DATA_DIR", str(ml100k_dir.parent))
    assert main(["data", "info", "data=ml-100k", f"out={tmp_path}"]) == 0
    out = capsys.readouterr().out
    loaded = next(line for line in out.splitlines() if line.startswith("loaded"))
    assert loaded.split()[1:4] == ["943", "1682", "100000"]
    assert "user age (7 values)" in out and "item genre (19 values)" in out
    info = json.loads((tmp_path / "data_info.json").read_text())
    assert info["stages"]["loaded"] == {"users": 943, "items": 1682, "interactions": 100_000,
                                        "density": pytest.approx(100_000 / (943 * 1682))}
    assert info["split"]["scheme"] == "random" and info["split"]["train"] == 80_808
    assert info["split"]["valid"] + info["dropped"]["valid_cold_items"] == 9_596


def test_data_info_synthetic_with_overrides(tmp_path, capsys):
    overrides = ["data=synthetic", "data.source.n_users=200", "data.source.n_items=100",
                 "data.source.n_interactions=4000", "data.split.scheme=loo", "task.implicit_threshold=4", f"out={tmp_path}"]
    assert main(["data", "info", *overrides]) == 0
    info = json.loads((tmp_path / "data_info.json").read_text())
    assert info["stages"]["loaded"]["interactions"] == 4000
    assert info["implicit_threshold"] == 4 and info["dropped"]["below_threshold"] > 0
    assert info["split"]["scheme"] == "loo" and info["split"]["test"] <= info["stages"]["preprocessed"]["users"]
    assert "dropped: duplicates" in capsys.readouterr().out


def test_data_info_reports_bad_input_in_one_line(tmp_path, capsys):
    assert main(["data", "info", "data=table", f"data_root={tmp_path}", f"out={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("recsearch: error: ") and f"{tmp_path}/ratings.csv: no such file" in err
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,great,3\n")
    assert main(["data", "info", "data=table", f"data_root={tmp_path}", f"out={tmp_path}"]) == 2
    assert "ratings.csv: line 2, column 3 (rating): expected a number for the rating, got 'great'" in capsys.readouterr().err
    assert main(["data", "info", "data=synthetic", "data.split.scheme=weekly", f"out={tmp_path}"]) == 2
    assert "data.split.scheme: Input should be 'random', 'loo', 'temporal', 'kfold', 'given', 'cold_users' or" in (
        capsys.readouterr().err)


# -- fetch: the opener is replaced, nothing leaves the machine ------------------------------------
def zip_bytes(members: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return buffer.getvalue()


@pytest.fixture
def served(monkeypatch):
    """Serve given bytes for any URL and record the URLs asked for."""
    requests: list[str] = []

    def serve(payload: bytes):
        def urlopen(url, timeout):
            requests.append(url)
            return io.BytesIO(payload)

        monkeypatch.setattr(fetch, "urlopen", urlopen)
        return requests

    return serve


def test_fetch_verifies_then_unpacks(tmp_path, served):
    payload = zip_bytes({"ml-100k/u.data": "1\t2\t5\t881250949\n"})
    requests = served(payload)
    folder = fetch.fetch_command("ml-100k", tmp_path, sha256=hashlib.sha256(payload).hexdigest())
    assert requests == ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
    assert (folder / "u.data").read_text().startswith("1\t2\t5")
    fetch.fetch_command("ml-100k", tmp_path, sha256=hashlib.sha256(payload).hexdigest())
    assert len(requests) == 1  # a verified archive already there is not downloaded again


def test_fetch_rejects_a_wrong_checksum_and_keeps_nothing(tmp_path, served):
    served(zip_bytes({"ml-1m/ratings.dat": "1::2::5::3\n"}))
    with pytest.raises(DataError, match="does not match the expected " + fetch.ARCHIVES["ml-1m"][1]):
        fetch.fetch_command("ml-1m", tmp_path)  # the pinned checksum: this payload is not the real archive
    assert list(tmp_path.iterdir()) == []


def test_fetch_refuses_members_outside_dest(tmp_path, served):
    payload = zip_bytes({"../evil.txt": "x"})
    served(payload)
    with pytest.raises(DataError, match="would be written outside"):
        fetch.fetch_command("ml-100k", tmp_path / "data", sha256=hashlib.sha256(payload).hexdigest())
    assert not (tmp_path / "evil.txt").exists()


def test_fetch_command_line(tmp_path, served, monkeypatch, capsys):
    payload = zip_bytes({"ml-1m/ratings.dat": "1::2::5::3\n"})
    served(payload)
    monkeypatch.setitem(fetch.ARCHIVES, "ml-1m", (fetch.ARCHIVES["ml-1m"][0], hashlib.sha256(payload).hexdigest()))
    assert main(["data", "fetch", "ml-1m", "--dest", str(tmp_path)]) == 0
    assert (tmp_path / "ml-1m" / "ratings.dat").is_file()
    assert f"recsearch data info data=ml-1m data_root={tmp_path}" in capsys.readouterr().out
