"""Atomic file writes and an exclusive lock file.

A crash never leaves a half-written file behind :func:`atomic_write`: the data goes to a temporary file in the same
folder (a name of its own for every write, so concurrent writers of one path never share it), is flushed and
fsynced, renamed over the target, and the folder is fsynced so the rename itself survives a power cut.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

Writer = Callable[[IO[bytes]], object]


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder (so that a rename in it is durable); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A temporary file name beside ``path``, unique to this process, thread and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, data: bytes | str | Writer, *, mode: int | None = None, fsync: bool = True,
                 encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, text, or a function that writes into a binary file) to ``path`` atomically.

    ``mode`` sets the file's permission bits (e.g. ``0o600``) before it appears under its name. ``fsync=False``
    skips both fsyncs (for files that are cheap to rebuild). Returns ``path``.
    """
    p = Path(path)
    tmp = temporary_name(p)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            if mode is not None:
                os.fchmod(fh.fileno(), mode)  # the umask may have cleared bits the caller asked for
            if isinstance(data, bytes | bytearray | memoryview):
                fh.write(data)
            elif isinstance(data, str):
                fh.write(data.encode(encoding))
            else:
                data(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(p.parent)
    return p


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, mode: int | None = None,
                      fsync: bool = True) -> Path:
    """:func:`atomic_write` of ``obj`` as JSON (with a final newline)."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n", mode=mode, fsync=fsync)


class LockBusy(OSError):
    """The lock file is held by another process (``holder`` is what that process wrote into it)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is locked by {holder or 'another process'}")
        self.path, self.holder = path, holder


class ExclusiveLock:
    """An exclusive ``flock`` on a lock file that names its holder (``pid N``); released on :meth:`release`.

    ``blocking=False`` raises :class:`LockBusy` at once when another process holds it; ``blocking=True`` waits.
    Where ``fcntl`` does not exist (Windows) the lock is a no-op. Also a context manager.
    """

    def __init__(self, path: str | Path, *, blocking: bool = False, mode: int = 0o644) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        try:
            import fcntl  # POSIX only; imported where a lock is taken
        except ImportError:  # pragma: no cover - Windows
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise LockBusy(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> ExclusiveLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
