"""An exclusive lock file that names its holder and disappears with it (crash-safe).

The lock is an OS advisory lock (``flock``) on a small file. The kernel drops it when the holding
process exits for any reason, ``kill -9`` included, so a crashed holder never leaves a stale lock
behind. ``flock`` locks belong to the open file, so two lock objects on one path exclude each
other even inside one process, and closing some other descriptor of the file does not drop the
lock. On NFS, Linux implements ``flock`` with the server's byte-range locks, so the lock also
works between the clients of a mount, which is what a sweep on a cluster shares. The file's
content (pid, host, start time, purpose) only serves the message that names the holder; it is
never what decides whether the lock is held.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

__all__ = ["FileLock", "LockHeldError"]


class LockHeldError(RuntimeError):
    """Another live process holds the lock; ``holder`` is what it wrote into the lock file."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path, self.holder = path, holder
        who = ", ".join(f"{k} {v}" for k, v in holder.items()) if holder else "holder unknown"
        super().__init__(f"{path} is locked by another process ({who})")


class FileLock:
    """``with FileLock(path, purpose="..."):`` or ``acquire()`` / ``release()``; never blocks.

    ``acquire`` raises :class:`LockHeldError` when anyone else (another process, or another
    ``FileLock`` object in this one) holds the lock.
    """

    def __init__(self, path: str | os.PathLike[str], purpose: str = ""):
        self.path = Path(path)
        self.purpose = purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait_s: float = 0.0) -> "FileLock":
        """Take the lock; while someone else holds it, retry for up to ``wait_s`` seconds, then raise
        :class:`LockHeldError`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self._try_acquire()
            except LockHeldError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _try_acquire(self) -> "FileLock":
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK):
                raise LockHeldError(self.path, self.holder()) from None
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "purpose": self.purpose}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an unlocked file with content would name a holder that is gone
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> dict[str, Any]:
        """What the current holder wrote (empty when unknown or unlocked)."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}

    def is_locked(self) -> bool:
        """Whether some process (this one included, through this object) holds the lock right now."""
        if self._fd is not None:
            return True
        try:
            self.acquire()
        except LockHeldError:
            return True
        self.release()
        return False

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.release()
        except Exception:
            pass
