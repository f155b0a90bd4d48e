"""Writing files so that nothing a user wrote is lost.

``atomic_write`` builds the new file beside the old one and swaps it in with
``os.replace``, which is atomic on POSIX and Windows: a reader (or a crash)
sees the old file or the complete new one, never half of it. Checkpoints,
tokenizers and preference datasets all write through it.
"""

from __future__ import annotations

import os
import re
import secrets
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "remove_stale_temporaries"]

# The temporary file's name: ``.<name>.<pid>.<random>.tmp`` beside ``<name>``.
# The pid says who is writing it, so a later run can tell a file left by a
# crash (its writer is gone) from one another process is writing right now.
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{12}\.tmp$")
_OLD_TMP = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.tmp$")  # written before the pid was added


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Create or replace the file ``path`` so readers see the old or the new one, never half.

    write: called with a binary file object opened on a temporary file in the
        same directory as ``path`` (``os.replace`` is atomic only within one
        file system). If it raises, the temporary file is removed and ``path``
        is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
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


def _alive(pid: int) -> bool:
    """True if a process with this pid exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, but belongs to someone else
    return True


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Delete the temporary files that ``atomic_write`` left in ``directory`` when a writer died.

    A crash (kill -9, power loss) in the middle of a save leaves the old file
    whole, but also a hidden ``.<name>.<pid>.<random>.tmp`` that nothing else
    would ever remove. A file is stale when the process that was writing it no
    longer exists (files of a live writer are left alone). Returns the paths
    removed. The run folder calls this when a run starts.
    """
    directory = os.fspath(directory)
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TMP.match(name)
        stale = (match is not None and not _alive(int(match["pid"]))) or (match is None and _OLD_TMP.match(name))
        if stale:
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed
