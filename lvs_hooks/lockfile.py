"""File locks that never write through a path someone else planted.

filelock (3.19, as the RPM bundles it) opens its lock file with O_TRUNC and chmods it, following
a symbolic link at the lock's name: a link planted at `run/transition.lock` made root truncate
and chmod its target. This lock opens with O_NOFOLLOW and without O_TRUNC (safeio.open_write),
refuses anything but a regular file with one link, and takes flock(2) on it: the same kind of
lock filelock takes on Linux, so the two exclude each other on the same path (tests hold one
with filelock), and the kernel releases it when its holder dies.

The interface is filelock's as lvs-hooks uses it: `acquire(timeout=...)` usable as a context
manager, `release()`, `is_locked`, `with lock:`, and filelock.Timeout when another holder keeps
it, so every caller catches what it caught before. Re-entrant per thread: a thread that holds it
may take it again (the MASTER transition holds the transition lock and its reseed takes it too);
other threads of the same process wait their turn, as other processes do.
"""

import fcntl
import os
import threading
import time
from typing import Any, Optional

import filelock

from lvs_hooks import safeio
from lvs_hooks.errors import LvsHooksError, UntrustedPath

# How often a waiter retries: a transition releases the lock in well under this much once done.
_POLL = 0.01


class _Acquired:
    """What acquire() returns: `with lock.acquire(timeout=...):` releases on the way out."""

    def __init__(self, lock: "FileLock"):
        self.lock = lock

    def __enter__(self) -> "FileLock":
        return self.lock

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


class FileLock:
    """An exclusive flock on `path`, created with `mode`; `timeout` is the default wait in
    seconds (negative: forever)."""

    def __init__(self, path: "safeio.PathLike", timeout: float = -1, mode: int = 0o600):
        self.lock_file = os.fspath(path)
        self.timeout = timeout
        self.mode = mode
        self._local = threading.local()

    @property
    def is_locked(self) -> bool:
        """Whether this thread holds it."""
        return getattr(self._local, "count", 0) > 0

    def acquire(self, timeout: Optional[float] = None, poll_interval: float = _POLL) -> _Acquired:
        """Take the lock, waiting up to `timeout` seconds (None: the default; negative:
        forever). filelock.Timeout when another holder keeps it; UntrustedPath when the lock's
        name is a symbolic link or anything but a regular file of ours."""
        if self.is_locked:
            self._local.count += 1
            return _Acquired(self)
        wait = self.timeout if timeout is None else timeout
        deadline = None if wait < 0 else time.monotonic() + wait
        fd = self._open()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise filelock.Timeout(self.lock_file) from None
                    time.sleep(poll_interval)
        except BaseException:
            os.close(fd)
            raise
        self._local.fd = fd
        self._local.count = 1
        return _Acquired(self)

    def release(self) -> None:
        """Give back one acquire of this thread; the last one unlocks."""
        count = getattr(self._local, "count", 0)
        if count == 0:
            return
        self._local.count = count - 1
        if count == 1:
            fd = self._local.fd
            self._local.fd = None
            # Closing the last descriptor releases the flock.
            os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _open(self) -> int:
        try:
            return safeio.open_write(self.lock_file, self.mode)
        except safeio.Refused as e:
            raise UntrustedPath(f"lock {self.lock_file}: {e.strerror}; nothing was done") from None
        except OSError as e:
            # A read-only or full file system, a missing directory: the lock cannot be had,
            # so nothing it guards may run.
            raise LvsHooksError(
                f"lock {self.lock_file}: cannot open: {e.strerror or e}; nothing was done"
            ) from None
