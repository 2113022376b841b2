"""The transition lock: the one way anything that acts on the kernel's table takes it.

One file lock in the run directory (`transition.lock`) serialises keepalived's transitions
(events.sequencer), the periodic duties and the agent's kernel work across processes. Within a
process it must be re-entrant for the thread that holds it: the MASTER transition holds it for
its whole length, and the reseed it runs goes through the inject path, which takes it too. A
lock object counts its own re-entries per thread, while two objects on the same path exclude
each other even within one process (flock is per open file). So every caller gets the same
object for a path from here, and other threads still wait their turn. The lock is
lvs_hooks.lockfile's, which never follows a symbolic link planted at its name.
"""

import os
import threading
from typing import Dict

from lvs_hooks.lockfile import FileLock

LOCK_NAME = "transition.lock"

# A periodic duty waits this long for the lock, then leaves its turn to the next period: a
# transition holds it, and that comes first.
DUTY_LOCK_TIMEOUT = 0.2

_locks: Dict[str, FileLock] = {}
_guard = threading.Lock()


def transition_lock(run_dir: str) -> FileLock:
    """This process's lock object for `<run_dir>/transition.lock`; acquire it with a timeout
    (`with lock.acquire(timeout=...)`), filelock.Timeout when another holder keeps it."""
    path = os.path.join(os.fspath(run_dir), LOCK_NAME)
    with _guard:
        lock = _locks.get(path)
        if lock is None:
            lock = _locks[path] = FileLock(path, mode=0o600)
        return lock


def lock_path(run_dir: str) -> str:
    return os.path.join(os.fspath(run_dir), LOCK_NAME)
