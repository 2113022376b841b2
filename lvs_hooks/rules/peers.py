"""The peer directors' MAC addresses: configured, or learned from the neighbour table.

A learned MAC is kept in the rules state file, so that a rebooted director whose neighbour table
is still empty (the peer has not spoken to it yet) can restore its rules at boot.
"""

import contextlib
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from lvs_hooks.errors import PeerMacUnknown
from lvs_hooks.rules.model import normalize_mac

log = logging.getLogger(__name__)

# NUD states whose link-layer address is worth trusting (REACHABLE, STALE, DELAY, PROBE,
# PERMANENT); INCOMPLETE and FAILED have none, NOARP a meaningless one.
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x80
DISCARD_PORT = 9


def neighbour_table_mac(addr: str) -> Optional[str]:
    """The MAC the kernel's neighbour table has for `addr` (any interface), or None."""
    # deferred: pyroute2 costs half a second to import, and only an unknown peer MAC needs it
    from pyroute2 import IPRoute

    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with IPRoute() as ipr:
        for msg in ipr.get_neighbours(family=family, dst=addr):
            mac = msg.get_attr("NDA_LLADDR")
            if mac and msg["state"] & _NUD_USABLE:
                return normalize_mac(mac)
    return None


def provoke_resolution(addr: str) -> None:
    """Make the kernel resolve `addr`: one empty UDP datagram to its discard port."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(b"", (addr, DISCARD_PORT))


@dataclass
class PeerMacs:
    """The MACs the rules use, in a stable order, and where each came from."""

    macs: List[str] = field(default_factory=list)
    sources: Dict[str, str] = field(
        default_factory=dict
    )  # mac -> "config" | "neighbour ADDR" | ...
    learned: Dict[str, str] = field(default_factory=dict)  # addr -> mac, this time
    missing: List[str] = field(default_factory=list)  # peers left out (required=False)


def resolve_peer_macs(
    peers: Sequence[str],
    static: Sequence[str],
    recorded: Dict[str, str],
    wait: float = 1.0,
    required: bool = True,
    lookup: Callable[[str], Optional[str]] = neighbour_table_mac,
    provoke: Callable[[str], None] = provoke_resolution,
) -> PeerMacs:
    """Configured MACs first, then one per peer address: from the neighbour table, else the
    one recorded when it was last learned, else from the neighbour table after asking the
    kernel to resolve it (up to `wait` seconds: only for a peer never learned, so that a
    takeover, whose peer is likely dead, never waits). A peer with none: PeerMacUnknown if
    `required`, else left out (and named in `missing`)."""
    out = PeerMacs()

    def add(mac: str, source: str) -> None:
        if mac not in out.macs:
            out.macs.append(mac)
            out.sources[mac] = source

    for configured in static:
        add(normalize_mac(configured), "config")
    found = {p: lookup(p) for p in peers}
    missing = [p for p, mac in found.items() if mac is None and p not in recorded]
    if missing:
        for p in missing:
            provoke(p)
        deadline = time.monotonic() + wait
        while missing and time.monotonic() < deadline:
            time.sleep(0.02)
            for p in list(missing):
                found[p] = lookup(p)
                if found[p] is not None:
                    missing.remove(p)
    unknown: List[str] = []
    for p in peers:
        mac = found[p]
        if mac is not None:
            out.learned[p] = mac
            add(mac, f"neighbour table ({p})")
        elif p in recorded:
            log.warning(
                "peer %s: not in the neighbour table; using %s learned before", p, recorded[p]
            )
            add(recorded[p], f"learned before ({p})")
        else:
            unknown.append(p)
    if unknown and not required:
        log.warning(
            "peer director %s: MAC address unknown (not in the neighbour table, never learned):"
            " its forwarded packets are not guarded by the rules until it is learned",
            ", ".join(unknown),
        )
        out.missing = unknown
    elif unknown:
        raise PeerMacUnknown(
            f"peer director {', '.join(unknown)}: MAC address unknown (not in the neighbour "
            "table, never learned): set rules.peer_macs, or make sure the peer is reachable"
        )
    return out
