"""Reading a sweep's storage, a local folder or a URI such as ``s3://bucket/sweeps``, through
pyarrow's filesystems: what results and checkpoints are read back with."""

from __future__ import annotations

from typing import Any


def filesystem(path: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path within it) of a folder or URI."""
    from pyarrow import fs

    if "://" in path:
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), path


def children(fs_: Any, root: str) -> list:
    """File infos of a folder's entries; none when it does not exist."""
    from pyarrow import fs

    if fs_.get_file_info(root).type != fs.FileType.Directory:
        return []
    return fs_.get_file_info(fs.FileSelector(root))


def read_text(fs_: Any, path: str) -> str | None:
    """A file's text; None when there is no such file."""
    from pyarrow import fs

    if fs_.get_file_info(path).type != fs.FileType.File:
        return None
    with fs_.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")
