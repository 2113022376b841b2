"""Log lines for things that can come by the thousand (refused datagrams): at most one line per
kind per interval, saying how many came since the last line.

The first occurrence of a kind after a quiet interval is logged at once, with its detail (the
source and the reason); the next ones within the interval are only counted, and the line that
ends the interval (the next occurrence after it, or `flush()`, which the caller's loop calls
once in a while) says how many there were and gives the detail of the last one. A flood of
20,000 forged datagrams is then two or three lines, never 20,000 (design.md section 6.2).

Kinds must be few and fixed (a category, never a source address): one entry per kind is kept.
Not thread-safe: one per receiving loop.
"""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict

INTERVAL = 10.0


@dataclass
class _Kind:
    pending: int = 0  # occurrences not yet in a line
    last: str = ""  # detail of the last of them
    since: float = 0.0  # start of the interval they fell in
    next_line: float = float("-inf")  # no line before this time
    total: int = 0  # all occurrences


class RateLimitedLog:
    """`note(kind, detail)` for each occurrence; `flush()` now and then. `lines` counts the lines
    logged (tests, and the log's own volume)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ):
        self.logger = logger
        self.interval = float(interval)
        self.clock = clock
        self.level = level
        self.lines = 0
        self._kinds: Dict[str, _Kind] = {}

    def note(self, kind: str, detail: str) -> None:
        now = self.clock()
        k = self._kinds.get(kind)
        if k is None:
            k = self._kinds[kind] = _Kind()
        if not k.pending:
            k.since = now
        k.pending += 1
        k.total += 1
        k.last = detail
        if now >= k.next_line:
            self._line(kind, k, now)

    def flush(self) -> None:
        """Log the counts whose interval is over (call it from the loop, e.g. every tick)."""
        now = self.clock()
        for kind, k in self._kinds.items():
            if k.pending and now >= k.next_line:
                self._line(kind, k, now)

    def total(self, kind: str) -> int:
        k = self._kinds.get(kind)
        return k.total if k is not None else 0

    def _line(self, kind: str, k: _Kind, now: float) -> None:
        if k.pending == 1:
            self.logger.log(self.level, "%s: %s", kind, k.last)
        else:
            self.logger.log(
                self.level,
                "%s: %d in the last %.0f s (at most one line per %.0f s); the last: %s",
                kind, k.pending, max(now - k.since, 0.0), self.interval, k.last,
                extra={"fields": {"count": k.pending}},
            )
        self.lines += 1
        k.pending = 0
        k.next_line = now + self.interval
