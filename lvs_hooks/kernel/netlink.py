"""IPVS over generic netlink (pyroute2): services, real servers, sync daemons, timeouts.

pyroute2 declares the services and destinations but types the daemon and timeout attributes as
raw `hex`. We declare those messages here on pyroute2's own generic-netlink classes, with the
kernel's names (include/uapi/linux/ip_vs.h), and keep them apart from the small API below.

Attribute encodings follow net/netfilter/ipvs/ip_vs_ctl.c: the daemon's port, maxlen are u16 in
host order, the IPv4 group is an in_addr (network order), the TTL is u8; timeouts are u32 seconds.
"""

import errno
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Tuple

from lvs_hooks.errors import KernelError, SyncDaemonError
from lvs_hooks.kernel.model import FWD_NAMES, PROTO_NAMES, Destination, Service
from lvs_hooks.kernel.pyroute2_netlink import (
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    GenericNetlinkSocket,
    NetlinkError,
    genlmsg,
    nla,
)
from lvs_hooks.kernel.pyroute2_netlink import ipvs as p2ipvs

log = logging.getLogger(__name__)

GENL_NAME = "IPVS"
GENL_VERSION = 1

IPVS_CMD_GET_SERVICE = p2ipvs.IPVS_CMD_GET_SERVICE
IPVS_CMD_GET_DEST = p2ipvs.IPVS_CMD_GET_DEST
IPVS_CMD_NEW_DAEMON = p2ipvs.IPVS_CMD_NEW_DAEMON
IPVS_CMD_DEL_DAEMON = p2ipvs.IPVS_CMD_DEL_DAEMON
IPVS_CMD_GET_DAEMON = p2ipvs.IPVS_CMD_GET_DAEMON
IPVS_CMD_SET_CONFIG = p2ipvs.IPVS_CMD_SET_CONFIG
IPVS_CMD_GET_CONFIG = p2ipvs.IPVS_CMD_GET_CONFIG

# enum ip_conn_flags / sync daemon states (include/uapi/linux/ip_vs.h)
IP_VS_STATE_NONE = 0
IP_VS_STATE_MASTER = 1
IP_VS_STATE_BACKUP = 2
DAEMON_STATES = {"master": IP_VS_STATE_MASTER, "backup": IP_VS_STATE_BACKUP}
DAEMON_STATE_NAMES = {v: k for k, v in DAEMON_STATES.items()}

IP_VS_SVC_F_PERSISTENT = 0x0001


class ipvs_cmd_msg(genlmsg):
    """IPVS generic netlink message with the daemon and timeout attributes typed."""

    prefix = "IPVS_CMD_ATTR_"
    nla_map = (
        ("IPVS_CMD_ATTR_UNSPEC", "none"),
        ("IPVS_CMD_ATTR_SERVICE", "service"),
        ("IPVS_CMD_ATTR_DEST", "dest"),
        ("IPVS_CMD_ATTR_DAEMON", "daemon"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
    )

    service = p2ipvs.ipvsmsg.service
    dest = p2ipvs.ipvsmsg.dest

    class daemon(nla):
        prefix = "IPVS_DAEMON_ATTR_"
        nla_map = (
            ("IPVS_DAEMON_ATTR_UNSPEC", "none"),
            ("IPVS_DAEMON_ATTR_STATE", "uint32"),
            ("IPVS_DAEMON_ATTR_MCAST_IFN", "asciiz"),
            ("IPVS_DAEMON_ATTR_SYNC_ID", "uint32"),
            ("IPVS_DAEMON_ATTR_SYNC_MAXLEN", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP", "ip4addr"),
            ("IPVS_DAEMON_ATTR_MCAST_GROUP6", "ip6addr"),
            ("IPVS_DAEMON_ATTR_MCAST_PORT", "uint16"),
            ("IPVS_DAEMON_ATTR_MCAST_TTL", "uint8"),
        )


@dataclass(frozen=True)
class SyncDaemon:
    """A running kernel sync daemon (one master and one backup at most per netns)."""

    state: str  # "master" or "backup"
    ifname: str
    syncid: int
    maxlen: int = 0
    group: str = ""
    port: int = 0
    ttl: int = 0


@dataclass(frozen=True)
class Timeouts:
    """Per-protocol connection timeouts in seconds (ipvsadm --set tcp tcpfin udp)."""

    tcp: int
    tcpfin: int
    udp: int


# ---- message builders (pure: tested without a kernel) ---------------------------------------


def build_new_daemon(
    state: str,
    ifname: str,
    syncid: int,
    maxlen: int = 0,
    group: Optional[str] = None,
    port: int = 0,
    ttl: int = 0,
) -> ipvs_cmd_msg:
    attrs = [
        ("IPVS_DAEMON_ATTR_STATE", DAEMON_STATES[state]),
        ("IPVS_DAEMON_ATTR_MCAST_IFN", ifname),
        ("IPVS_DAEMON_ATTR_SYNC_ID", syncid),
    ]
    # The optional attributes exist since Linux 4.3; omit them at their defaults so an older
    # kernel still accepts the request.
    if maxlen:
        attrs.append(("IPVS_DAEMON_ATTR_SYNC_MAXLEN", maxlen))
    if group:
        if ":" in group:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_GROUP6", group))
        else:
            attrs.append(("IPVS_DAEMON_ATTR_MCAST_GROUP", group))
    if port:
        attrs.append(("IPVS_DAEMON_ATTR_MCAST_PORT", port))
    if ttl:
        attrs.append(("IPVS_DAEMON_ATTR_MCAST_TTL", ttl))
    return _msg(IPVS_CMD_NEW_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})])


def build_del_daemon(state: str) -> ipvs_cmd_msg:
    attrs = [("IPVS_DAEMON_ATTR_STATE", DAEMON_STATES[state])]
    return _msg(IPVS_CMD_DEL_DAEMON, [("IPVS_CMD_ATTR_DAEMON", {"attrs": attrs})])


def build_set_timeouts(tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> ipvs_cmd_msg:
    """0 leaves a value unchanged (the kernel's own rule)."""
    return _msg(
        IPVS_CMD_SET_CONFIG,
        [
            ("IPVS_CMD_ATTR_TIMEOUT_TCP", tcp),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", tcpfin),
            ("IPVS_CMD_ATTR_TIMEOUT_UDP", udp),
        ],
    )


def _msg(cmd: int, attrs: list) -> ipvs_cmd_msg:
    msg = ipvs_cmd_msg()
    msg["cmd"] = cmd
    msg["version"] = GENL_VERSION
    msg["attrs"] = attrs
    return msg


# ---- decoders (pure) --------------------------------------------------------------------------


def decode_daemon(msg) -> SyncDaemon:
    d = msg.get_attr("IPVS_CMD_ATTR_DAEMON")
    group = d.get_attr("IPVS_DAEMON_ATTR_MCAST_GROUP6") or d.get_attr(
        "IPVS_DAEMON_ATTR_MCAST_GROUP"
    )
    state = d.get_attr("IPVS_DAEMON_ATTR_STATE")
    return SyncDaemon(
        state=DAEMON_STATE_NAMES.get(state, str(state)),
        ifname=d.get_attr("IPVS_DAEMON_ATTR_MCAST_IFN") or "",
        syncid=d.get_attr("IPVS_DAEMON_ATTR_SYNC_ID") or 0,
        maxlen=d.get_attr("IPVS_DAEMON_ATTR_SYNC_MAXLEN") or 0,
        group=group or "",
        port=d.get_attr("IPVS_DAEMON_ATTR_MCAST_PORT") or 0,
        ttl=d.get_attr("IPVS_DAEMON_ATTR_MCAST_TTL") or 0,
    )


# The persistence netmask of a service (IPVS_SVC_ATTR_NETMASK, include/uapi/linux/ip_vs.h) is
# one 32-bit field that means two things. net/netfilter/ipvs/ip_vs_ctl.c stores what the
# request carried (ip_vs_genl_parse_service: nla_get_be32) in svc->netmask, a __be32, and sends
# it back as it is (ip_vs_genl_fill_service: nla_put_be32):
#
# | family | svc->netmask holds             | its 4 bytes on the wire      | example          |
# |--------|--------------------------------|------------------------------|------------------|
# | IPv4   | the mask, network order        | ff ff ff 00                  | 255.255.255.0    |
# | IPv6   | the prefix length, 1..128, as  | 80 00 00 00 on little-endian | 128              |
# |        | a host-order u32 (ipvsadm and  | hosts (x86, arm64)           |                  |
# |        | keepalived put it with         |                              |                  |
# |        | NLA_PUT_U32)                   |                              |                  |
#
# ip_vs_add_service/ip_vs_edit_service check an IPv6 one with `(__force __u32) u->netmask`
# between 1 and 128, and ip_vs_sched_persist masks a client with ipv6_addr_prefix(...,
# (__force __u32) svc->netmask): the value in host order. pyroute2 types the attribute as an
# IPv4 address (dotted text of the 4 bytes), so an IPv6 prefix length is those bytes read back
# in host order; read in network order, /128 came out as 2147483648 (issue 17).
IPV6_PREFIX_MAX = 128


def decode_netmask(af: int, text: str) -> str:
    """Service.netmask from pyroute2's text of IPVS_SVC_ATTR_NETMASK: the dotted mask for IPv4,
    the prefix length for IPv6 (see the table above); "" when the kernel sent none. An IPv6
    prefix length the kernel would not have accepted is logged and taken as 128 (templates
    keyed by the whole client address, the kernel's default)."""
    if not text or af == 4:
        return text or ""
    plen = int.from_bytes(socket.inet_aton(text), sys.byteorder)
    if not 1 <= plen <= IPV6_PREFIX_MAX:
        log.warning("IPVS sent an IPv6 persistence prefix length of %d (bytes %s): taken as %d",
                    plen, text, IPV6_PREFIX_MAX)
        plen = IPV6_PREFIX_MAX
    return str(plen)


def decode_service(msg, destinations: Tuple[Destination, ...] = ()) -> Service:
    s = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    af = 6 if s.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET6 else 4
    fwmark = s.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
    flags = (s.get_attr("IPVS_SVC_ATTR_FLAGS") or {}).get("flags", 0)
    netmask = decode_netmask(af, s.get_attr("IPVS_SVC_ATTR_NETMASK") or "")
    addr = s.get_attr("IPVS_SVC_ATTR_ADDR")
    return Service(
        af=af,
        protocol=None if fwmark else PROTO_NAMES.get(s.get_attr("IPVS_SVC_ATTR_PROTOCOL"), "?"),
        addr=None if fwmark else str(addr),
        port=0 if fwmark else (s.get_attr("IPVS_SVC_ATTR_PORT") or 0),
        fwmark=fwmark,
        scheduler=s.get_attr("IPVS_SVC_ATTR_SCHED_NAME") or "",
        persistent=bool(flags & IP_VS_SVC_F_PERSISTENT),
        timeout=s.get_attr("IPVS_SVC_ATTR_TIMEOUT") or 0,
        netmask=netmask,
        pe_name=s.get_attr("IPVS_SVC_ATTR_PE_NAME") or "",
        destinations=destinations,
    )


def decode_dest(msg) -> Destination:
    d = msg.get_attr("IPVS_CMD_ATTR_DEST")
    fwd = (d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") or 0) & 0x7
    return Destination(
        addr=str(d.get_attr("IPVS_DEST_ATTR_ADDR")),
        port=d.get_attr("IPVS_DEST_ATTR_PORT") or 0,
        fwd_method=FWD_NAMES.get(fwd, "masq"),
        weight=d.get_attr("IPVS_DEST_ATTR_WEIGHT") or 0,
    )


def decode_timeouts(msg) -> Timeouts:
    return Timeouts(
        tcp=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP") or 0,
        tcpfin=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN") or 0,
        udp=msg.get_attr("IPVS_CMD_ATTR_TIMEOUT_UDP") or 0,
    )


# ---- per-real-server counters (pure) ----------------------------------------------------------

# The counters the kernel puts in every real server of a GET_DEST reply (ip_vs_genl_fill_dest,
# net/netfilter/ipvs/ip_vs_ctl.c), inside IPVS_CMD_ATTR_DEST (include/uapi/linux/ip_vs.h). All
# three have been there since the IPVS netlink interface itself (2008, design.md 2.5);
# pyroute2's dest nla already declares them as uint32.
#
# | attribute                    | number | type | kernel field       | counts                  |
# |------------------------------|--------|------|--------------------|-------------------------|
# | IPVS_DEST_ATTR_ACTIVE_CONNS  | 7      | u32  | dest->activeconns  | connections, active     |
# | IPVS_DEST_ATTR_INACT_CONNS   | 8      | u32  | dest->inactconns   | connections, inactive   |
# | IPVS_DEST_ATTR_PERSIST_CONNS | 9      | u32  | dest->persistconns | templates bound to it   |
#
# ip_vs_bind_dest counts an entry when it is bound to the real server, ip_vs_unbind_dest when it
# goes: a template that found no real server (design.md 3.7) is in no count.


@dataclass(frozen=True)
class DestCounts:
    """How many entries of the table are bound to one real server of one service.

    Apart from Destination on purpose: snapshots compare Destinations for equality, and these
    change with every client. Counts carry no keys (design.md 2.5)."""

    service_key: Tuple  # Service.key()
    addr: str
    port: int
    active: int  # connections (not templates) that are active
    inactive: int  # connections that are not
    persistent: int  # persistence templates (ipvsadm -Ln --persistent-conn)


def decode_dest_counts(msg, service_key: Tuple) -> DestCounts:
    d = msg.get_attr("IPVS_CMD_ATTR_DEST")
    return DestCounts(
        service_key=service_key,
        addr=str(d.get_attr("IPVS_DEST_ATTR_ADDR")),
        port=d.get_attr("IPVS_DEST_ATTR_PORT") or 0,
        active=d.get_attr("IPVS_DEST_ATTR_ACTIVE_CONNS") or 0,
        inactive=d.get_attr("IPVS_DEST_ATTR_INACT_CONNS") or 0,
        persistent=d.get_attr("IPVS_DEST_ATTR_PERSIST_CONNS") or 0,
    )


# ---- the I/O seam -----------------------------------------------------------------------------


class IPVS:
    """A generic netlink socket bound to the IPVS family of the current network namespace."""

    def __init__(self) -> None:
        self._sock = GenericNetlinkSocket()
        try:
            self._sock.bind(GENL_NAME, ipvs_cmd_msg)
        except NetlinkError as e:
            self._sock.close()
            if e.code in (errno.ENOENT, errno.ENOTSUP):
                raise KernelError("IPVS is not available: the ip_vs module is not loaded") from e
            raise KernelError(f"IPVS netlink: {e.args[1] if len(e.args) > 1 else e}") from e

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "IPVS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, msg, what: str, dump: bool = False) -> list:
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        try:
            return list(self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags))
        except NetlinkError as e:
            raise KernelError(f"IPVS {what}: {_strerror(e.code)}") from e

    # services and real servers

    def services(self) -> List[Service]:
        """Every virtual service with its real servers."""
        return [
            decode_service(smsg, tuple(decode_dest(d) for d in dmsgs))
            for smsg, dmsgs in self._services_with_dests()
        ]

    def dest_counts(self) -> List[DestCounts]:
        """The counters of every real server of every service, in the kernel's order: the
        same requests as services(), one dump of the services and one of each one's real
        servers, and no read of the connection table."""
        result: List[DestCounts] = []
        for smsg, dmsgs in self._services_with_dests():
            key = decode_service(smsg).key()
            result.extend(decode_dest_counts(d, key) for d in dmsgs)
        return result

    def _services_with_dests(self) -> Iterator[Tuple[Any, list]]:
        """(service message, its real servers' messages) for every service."""
        for smsg in self._request(_msg(IPVS_CMD_GET_SERVICE, []), "list services", dump=True):
            svc_attrs = smsg.get_attr("IPVS_CMD_ATTR_SERVICE")
            key = _service_key_attrs(svc_attrs)
            dmsgs = self._request(
                _msg(IPVS_CMD_GET_DEST, [("IPVS_CMD_ATTR_SERVICE", {"attrs": key})]),
                "list real servers",
                dump=True,
            )
            yield smsg, dmsgs

    # sync daemons

    def daemons(self) -> List[SyncDaemon]:
        msgs = self._request(_msg(IPVS_CMD_GET_DAEMON, []), "list sync daemons", dump=True)
        return [decode_daemon(m) for m in msgs if m.get_attr("IPVS_CMD_ATTR_DAEMON")]

    def start_daemon(self, state: str, ifname: str, syncid: int, **optional) -> None:
        msg = build_new_daemon(state, ifname, syncid, **optional)
        try:
            self._sock.nlm_request(
                msg, msg_type=self._sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK
            )
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                raise SyncDaemonError(f"a {state} sync daemon is already running") from e
            if e.code == errno.ENODEV:
                raise SyncDaemonError(
                    f"cannot start {state} sync daemon: no interface {ifname!r}"
                ) from e
            raise SyncDaemonError(
                f"cannot start {state} sync daemon on {ifname}: {_strerror(e.code)}"
            ) from e
        log.info("started %s sync daemon on %s syncid %d", state, ifname, syncid)

    def stop_daemon(self, state: str) -> None:
        try:
            self._sock.nlm_request(
                build_del_daemon(state),
                msg_type=self._sock.prid,
                msg_flags=NLM_F_REQUEST | NLM_F_ACK,
            )
        except NetlinkError as e:
            if e.code == errno.ESRCH:
                raise SyncDaemonError(f"no {state} sync daemon is running") from e
            raise SyncDaemonError(
                f"cannot stop {state} sync daemon: {_strerror(e.code)}"
            ) from e
        log.info("stopped %s sync daemon", state)

    # timeouts

    def timeouts(self) -> Timeouts:
        msgs = self._request(_msg(IPVS_CMD_GET_CONFIG, []), "get timeouts")
        for m in msgs:
            if m.get_attr("IPVS_CMD_ATTR_TIMEOUT_TCP") is not None:
                return decode_timeouts(m)
        raise KernelError("IPVS get timeouts: the kernel sent no timeouts")

    def set_timeouts(self, tcp: int = 0, tcpfin: int = 0, udp: int = 0) -> None:
        self._request(build_set_timeouts(tcp, tcpfin, udp), "set timeouts")


def _service_key_attrs(svc) -> list:
    """The attributes that name a service, as the kernel wants them in a GET_DEST request."""
    keys = (
        "IPVS_SVC_ATTR_AF",
        "IPVS_SVC_ATTR_PROTOCOL",
        "IPVS_SVC_ATTR_ADDR",
        "IPVS_SVC_ATTR_PORT",
        "IPVS_SVC_ATTR_FWMARK",
    )
    fwmark = svc.get_attr("IPVS_SVC_ATTR_FWMARK")
    out = []
    for k in keys:
        v = svc.get_attr(k)
        if v is None:
            continue
        if fwmark and k in ("IPVS_SVC_ATTR_PROTOCOL", "IPVS_SVC_ATTR_ADDR", "IPVS_SVC_ATTR_PORT"):
            continue
        out.append((k, v))
    return out


def _strerror(code: int) -> str:
    try:
        return os.strerror(abs(code))
    except ValueError:
        return f"error {code}"
