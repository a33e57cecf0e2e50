"""``recsearch data fetch``: download a MovieLens archive from GroupLens, verify its SHA-256
before anything is unpacked, and unpack it (refusing members that would land outside ``dest``)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from recsearch.errors import DataError

# SHA-256 of the archives as GroupLens serves them (published by several independent projects;
# the files have not changed since their release). ``--sha256`` overrides them.
ARCHIVES = {
    "ml-100k": ("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": ("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
              "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
}
CONFIGS = {"ml-100k": "ml-100k-grouplens", "ml-1m": "ml-1m"}  # conf/data/ files reading the unpacked layout
CHUNK = 1 << 20


def fetch_command(name: str, dest: str | Path = "data", sha256: str | None = None) -> Path:
    """Download ``name`` (ml-100k or ml-1m) into ``dest`` and unpack it there, e.g.
    ``data/ml-100k/u.data``; returns the unpacked folder. An archive already in ``dest`` with
    the right checksum is not downloaded again."""
    if name not in ARCHIVES:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(ARCHIVES)}")
    url, expected = ARCHIVES[name]
    expected = (sha256 or expected).lower()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / f"{name}.zip"
    if archive.is_file() and file_sha256(archive) == expected:
        print(f"{archive} is already here and verified")
    else:
        download(url, archive, expected)
    unpack(archive, dest)
    print(f"unpacked into {dest / name}; use it with: recsearch data info data={CONFIGS[name]} data_root={dest}")
    return dest / name


def download(url: str, target: Path, sha256: str) -> None:
    """Stream ``url`` to ``target``, hashing as it goes; the file only takes its final name
    once the checksum matches."""
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    print(f"downloading {url}")
    try:
        with urlopen(url, timeout=60) as response, partial.open("wb") as out:
            while block := response.read(CHUNK):
                digest.update(block)
                out.write(block)
    except (URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {getattr(err, 'reason', err)}") from None
    if digest.hexdigest() != sha256:
        partial.unlink()
        raise DataError(f"{url}: SHA-256 {digest.hexdigest()} does not match the expected {sha256}; the "
                        "download is corrupt or the archive changed (check it, then pass --sha256)")
    partial.replace(target)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path, dest: Path) -> None:
    """Extract every member, after checking that none escapes ``dest`` (absolute paths, ``..``)."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zipped:
            for member in zipped.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DataError(f"{archive}: member {member!r} would be written outside {dest}")
            zipped.extractall(dest)
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a valid zip archive ({err})") from None
