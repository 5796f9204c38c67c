"""Writing a file so that a kill, a full disk or a crash never leaves half of it under its name.

Every file this project writes that another process may read while it is written (checkpoints,
downloaded data, caches, a sweep's results) goes through `atomic_write`: the bytes go to a hidden
file beside the target, reach the disk, and are then renamed over it. A rename within a folder is
atomic, so a reader sees the old file or the new one, never a mix; the folder is flushed too,
because until it reaches the disk a power loss can undo the rename.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PARTIAL_GLOB = ".*.partial"  # what `partial_file` names, as a pattern: for cleaning up after a kill


def partial_file(path: Path) -> Path:
    """Where `atomic_write` writes `path` first: hidden, in the same folder, and its own for each process
    (several sweep workers or data-parallel ranks may write the same file at once)."""
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


@contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """`with atomic_write(path) as f: f.write(...)`: `path` becomes what was written into `f` when the
    block ends, and stays as it was if the block raises (the partial file is removed)."""
    path = Path(path)
    partial = partial_file(path)
    try:
        with open(partial, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
        _fsync_folder(path.parent)
    finally:
        partial.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename just made in it) to disk; POSIX only: Windows cannot open a folder."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
