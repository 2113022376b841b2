"""Logging: to the journal/syslog when there is one (keepalived drops a hook's stdout), and to
stderr when a person runs the command in a terminal (or LVS_HOOKS_LOG_STDERR is set)."""

import logging
import logging.handlers
import os
import sys

SYSLOG_SOCKET = "/dev/log"

# `extra=SYSLOG_ONLY` on a record keeps it off the terminal: the CLI logs its one-line error
# for the journal, and click prints the same line on stderr already.
SYSLOG_ONLY = {"to_console": False}


_configured = False  # once per process: a door that falls back to the CLI calls this again


def setup_logging(debug: bool = False) -> None:
    global _configured
    if _configured:
        return
    _configured = True
    root = logging.getLogger()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    syslog = None
    if os.path.exists(SYSLOG_SOCKET):
        try:
            syslog = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        except OSError:
            syslog = None  # a socket nobody listens on: no syslog daemon
    if syslog is not None:
        syslog.setFormatter(logging.Formatter("lvs-hooks[%(process)d]: %(message)s"))
        root.addHandler(syslog)
    to_terminal = sys.stderr is not None and (
        sys.stderr.isatty() or os.environ.get("LVS_HOOKS_LOG_STDERR") or syslog is None
    )
    if to_terminal:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        err.addFilter(lambda record: getattr(record, "to_console", True))
        root.addHandler(err)
    # Never Python's last-resort handler: it would print a second copy of every error.
    root.addHandler(logging.NullHandler())
