"""One full-table push from this director, announced on the control channel.

Reads the table and the services, plans (push.planner), sends paced (push.sender) and tells
the peers where the push begins and ends (push-begin: its id, its size, the source port its
datagrams come from; push-end: the counts and the digest), so that a peer's agent can tell a
complete push from a partial one and check its own table against it.
"""

import contextlib
import logging
import socket
import time
from typing import TYPE_CHECKING, Optional

from lvs_hooks.config import Config
from lvs_hooks.kernel import mcast
from lvs_hooks.kernel.conntable import ConnTable, read_conn_table
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.push.planner import plan_push
from lvs_hooks.push.sender import open_push_sender, send_push

if TYPE_CHECKING:  # the agent, which defines the port, calls this module
    from lvs_hooks.agent import ControlPort

log = logging.getLogger(__name__)


def bind_push_source(sock: socket.socket, ipv6: bool, port: int) -> int:
    """Bind the push's socket to `port` (beside the kernel's backup daemon and the agent,
    which are bound to the group with SO_REUSEADDR too), else to an ephemeral port, where
    this host's agent would take the push for its kernel's own messages (a warning says so).
    The port bound."""
    any_addr = "::" if ipv6 else "0.0.0.0"
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((any_addr, port))
    except OSError as e:
        log.warning(
            "push: cannot send from the sync port %d (%s): sending from another, and this "
            "host's agent will take the push for its kernel's own messages",
            port, e.strerror or e,
        )
        sock.bind((any_addr, 0))
    # the socket sends only: leave the group's datagrams to the sockets that joined it
    level, option = (
        (socket.IPPROTO_IPV6, mcast.IPV6_MULTICAST_ALL) if ipv6
        else (socket.IPPROTO_IP, mcast.IP_MULTICAST_ALL)
    )
    with contextlib.suppress(OSError):
        sock.setsockopt(level, option, 0)
    return sock.getsockname()[1]


def push_table(
    cfg: Config, ipvs: IPVS, channel: Optional["ControlPort"] = None,
    table: Optional[ConnTable] = None,
) -> dict:
    """Push every template (and connection, with push.connections); the figures. `table`: the
    templates to push as the caller has them (the agent's table in memory), else a read."""
    t0 = time.monotonic()
    if table is None or cfg.push.connections:
        table = read_conn_table(
            cfg.paths.proc_root, templates_only=not cfg.push.connections, reason="push"
        )
    services = ipvs.services()
    # plan_push takes the templates of the whole table and skips them among the connections
    conns = table.entries if cfg.push.connections else ()
    plan = plan_push(table.templates, services, connections=conns)
    t_plan = time.monotonic()
    with open_push_sender(cfg) as sender:
        # Bound before the first datagram, so push-begin can name the source port: a peer
        # then tells this push from the kernel master daemon's own messages, which leave the
        # same address from another port. From the sync port itself when it can: this host's
        # agent captures what leaves by the sync interface as its kernel's own master
        # messages, and skips what comes from that port (the kernel's master sends from an
        # ephemeral one, design.md 3.8).
        port = bind_push_source(sender.sock, sender.ipv6, cfg.sync.port)

        def on_begin(push_id: str, templates: int) -> None:
            if channel is not None:
                body = {"push_id": push_id, "templates": templates, "port": port}
                channel.send("push-begin", body)

        def on_end(push_id: str, templates: int, datagrams: int, nbytes: int, digest: str) -> None:
            if channel is not None:
                channel.send(
                    "push-end",
                    {
                        "push_id": push_id,
                        "templates": templates,
                        "datagrams": datagrams,
                        "bytes": nbytes,
                        "digest": digest,
                    },
                )

        res = send_push(
            plan.entries(),
            sender,
            syncid=cfg.sync.syncid,
            maxlen=cfg.sync.maxlen,
            rate=cfg.push.rate,
            on_begin=on_begin,
            on_end=on_end,
        )
    figures = {
        **res.to_dict(),
        "planned": len(plan.planned),
        "connections": len(plan.entries()) - len(plan.planned),
        "skipped": dict(plan.skipped),
        "ms_plan": round((t_plan - t0) * 1000, 1),
        "ms_total": round((time.monotonic() - t0) * 1000, 1),
        "announced": channel is not None,
    }
    log.info(
        "push %s: %d templates%s in %d datagrams, %d bytes, %.0f ms on the wire (%.0f/s), "
        "%.0f ms in all%s%s",
        res.push_id,
        len(plan.planned),
        f" and {figures['connections']} connections" if figures["connections"] else "",
        res.datagrams,
        res.bytes,
        res.ms,
        res.rate,
        figures["ms_total"],
        f", skipped {dict(plan.skipped)}" if plan.skipped else "",
        "" if channel is not None else " (no control channel: not announced)",
        extra={"fields": {"push_id": res.push_id, "templates": len(plan.planned),
                          **{k: v for k, v in figures.items() if isinstance(v, (int, float))}}},
    )
    return figures
