"""One run of a costly piece of work at a time, shared by whoever asks while it runs.

The agent dumps its table in memory to a snapshot for the periodic duty and for `lvs-hooks
snapshot`. A dump is seconds of one core at a few hundred thousand templates under emulation,
and two at once share the interpreter: in the lab the command's dump took 7.0 s beside the
periodic one where alone it takes under 4. A caller that arrives while a run is under way gets
that run's result instead of starting a second; the dump it gets began before it asked, by at
most one dump's length, and says when it was captured.
"""

import threading
from typing import Callable, Generic, Optional, Tuple, TypeVar

T = TypeVar("T")


class _Run(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: Optional[_Run[T]] = None

    def run(self, work: Callable[[], T]) -> Tuple[T, bool]:
        """(work's result, whether it was another caller's run). The run under way is waited
        for without a deadline of its own: it is work of this process that ends (a dump and an
        atomic write, which has its lock's timeout). Its exception is raised to every caller."""
        with self._lock:
            run = self._current
            leader = run is None
            if leader:
                run = self._current = _Run()
        assert run is not None
        if not leader:
            run.done.wait()
            if run.error is not None:
                raise run.error
            return run.result, True  # type: ignore[return-value]
        try:
            run.result = work()
            return run.result, False
        except BaseException as e:
            run.error = e
            raise
        finally:
            with self._lock:
                self._current = None
            run.done.set()


__all__ = ["SingleFlight"]
