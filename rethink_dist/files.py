"""Writing files so that a reader never sees half of one: write beside, then rename over."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator


# Set by the command line's SIGINT handler (rethink_dist.cli). A library may catch the
# KeyboardInterrupt a Ctrl-C raises (numba's compiler prints "Exception ignored" and goes on); the
# flag still says it happened, and nothing is then made to look complete.
INTERRUPTED = threading.Event()


# A write the storage refuses: full, over a quota or a file-size limit, read-only (OS errors, and
# the words SQLite, pyarrow and Ray's copies use for them).
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
STORAGE_WORDS = ("No space left on device", "Disk quota exceeded", "File too large", "Read-only file system",
                 "database or disk is full", "attempt to write a readonly database", "unable to open database file")


def storage_error(e: BaseException | str) -> bool:
    """Whether an error (or its text) is a write refused by the storage: full, over a limit, read-only."""
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return True
    text = str(e)
    return any(w in text for w in STORAGE_WORDS)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came (even one a library swallowed)."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, after_interrupt: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends without
    an error, removed when it raises. The folder is created if missing. After a Ctrl-C (even one a
    library swallowed) the rename is refused, so that nothing is made to look complete, unless
    ``after_interrupt`` (a file that is valid at any moment, such as the results table)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if not after_interrupt:
            raise_if_interrupted()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def result_write(path: str | os.PathLike) -> Iterator[None]:
    """Inside, an OSError (a full disk, a file-size limit, a read-only file system) becomes
    :class:`rethink_dist.errors.WriteFailed` naming ``path``: one line for the user, exit code 1."""
    from rethink_dist.errors import WriteFailed

    try:
        yield
    except WriteFailed:
        raise
    except OSError as e:
        raise WriteFailed(path, e) from None


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON (NaN refused: JSON has none) to ``path``, atomically; a refused write
    raises WriteFailed naming the path (nothing is left half-written)."""
    text = json.dumps(obj, indent=indent, default=str, allow_nan=False) + "\n"
    with result_write(path), atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Fail now, before any work, when ``path`` (a file, or a ``folder``) cannot be written.

    Tries a real file in the nearest folder that exists (and removes it), so read-only mounts,
    pseudo file systems and missing permissions are all found. Raises UsageError naming the flag,
    the path and why; returns the path resolved.
    """
    import tempfile

    from rethink_dist.errors import UsageError

    p = Path(path).expanduser().resolve()
    if p.exists() and p.is_dir() != folder:
        raise UsageError(f"{what} {str(path)!r} is {'a file' if folder else 'a folder'}; expected "
                         f"{'a folder' if folder else 'a file name'}")
    nearest = p if folder and p.exists() else p.parent
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"{what} {str(path)!r} cannot be written: {str(nearest)!r} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=nearest):
            pass
    except OSError as e:
        raise UsageError(f"{what} {str(path)!r} cannot be written: creating a file in {str(nearest)!r} fails "
                         f"({e.strerror or e})") from None
    return p
