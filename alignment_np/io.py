"""Writing files so that nothing a user wrote is lost.

``atomic_write`` builds the new file beside the old one and swaps it in with
``os.replace``, which is atomic on POSIX and Windows: a reader (or a crash)
sees the old file or the complete new one, never half of it. Checkpoints,
tokenizers and preference datasets all write through it.
"""

from __future__ import annotations

import os
import secrets
from typing import Any, BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Create or replace the file ``path`` so readers see the old or the new one, never half.

    write: called with a binary file object opened on a temporary file in the
        same directory as ``path`` (``os.replace`` is atomic only within one
        file system). If it raises, the temporary file is removed and ``path``
        is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never clobber another writer's temporary file; mode 0o666 lets the
    # umask decide the permissions, as for any file the user creates.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
