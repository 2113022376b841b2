"""Logging: to the journal/syslog when there is one (keepalived drops a hook's stdout), and to
stderr when a person runs the command in a terminal."""

import logging
import logging.handlers
import os
import sys

SYSLOG_SOCKET = "/dev/log"


def setup_logging(debug: bool = False) -> None:
    root = logging.getLogger()
    if getattr(root, "_lvs_hooks_configured", False):
        return
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if os.path.exists(SYSLOG_SOCKET):
        try:
            handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        except OSError as e:
            # No syslog daemon listening: say so once on stderr, keep going.
            print(f"lvs-hooks: syslog unavailable ({e}); logging to stderr", file=sys.stderr)
            os.environ["LVS_HOOKS_LOG_STDERR"] = "1"
        else:
            handler.setFormatter(logging.Formatter("lvs-hooks[%(process)d]: %(message)s"))
            root.addHandler(handler)
    # A person at a terminal (or a test harness) sees the same lines on stderr.
    if sys.stderr is not None and (sys.stderr.isatty() or os.environ.get("LVS_HOOKS_LOG_STDERR")):
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(err)
    root._lvs_hooks_configured = True
