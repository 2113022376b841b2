"""The loop-protection rules as plain data, whatever the firewall tool. Pure: no I/O.

A director that is also a real server (DR, VIP on lo) has the virtual servers loaded in every
state. A packet the master forwards to it reaches its IPVS, which may send it back to the
master, which sends it again: the ping-pong loop. Two ways out, per service:

- fwmark: IPVS balances `virtual_server fwmark N` and only packets carrying mark N reach it. The
  rules mark packets to the service unless they come from a peer director's MAC (those were
  forwarded by the peer: they are for this host's real server). The same rules in every state.
- redirect: IPVS balances `virtual_server VIP PORT`; a REDIRECT in nat PREROUTING hands packets
  to the local stack before IPVS (at LOCAL_IN) sees them. On BACKUP and FAULT every packet to the
  service; on MASTER only packets from a peer director (a peer that still believes it is master
  while this one already is, during a failback; without peer MACs the MASTER chain redirects
  nothing and that moment is not covered).

Chains, by neutral name (each backend maps them to its own):

    mark              role-independent fwmark rules
    redirect          the pointer: a single jump to redirect_master or redirect_backup
    redirect_master   the redirect rules of the MASTER role
    redirect_backup   the redirect rules of the BACKUP and FAULT roles

Both role chains stay loaded; a role change rewrites only the pointer, in one atomic kernel call.
So the rules of a role keep their packet counters across swaps, and every packet to a protected
service is counted by exactly one rule of the chain the pointer names: a pass-through rule
(return) counts what MASTER leaves to IPVS.

Each rule carries an id (a hash of what it does) in its comment: the backends find their rules
in the kernel by it and tell a changed rule from an unchanged one.
"""

import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

from lvs_hooks.errors import ConfigError

ROLES = ("master", "backup")

MARK = "mark"
REDIRECT = "redirect"
REDIRECT_MASTER = "redirect_master"
REDIRECT_BACKUP = "redirect_backup"
ROLE_CHAINS = {"master": REDIRECT_MASTER, "backup": REDIRECT_BACKUP}

# Every comment starts with this tag, then the rule id: "lvs-hooks 1a2b3c4d fwmark 1 ...".
COMMENT_TAG = "lvs-hooks"


def role_of(state: str) -> str:
    """The rule role for a keepalived state or role name: FAULT protects like BACKUP."""
    s = state.lower()
    if s == "fault":
        return "backup"
    if s not in ROLES:
        raise ValueError(f"no rule role for {state!r}")
    return s


def normalize_mac(text: str) -> str:
    """Lower case, colon separated: the form iptables-save and nft list print."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    int("".join(parts), 16)  # ValueError for non-hex digits
    return ":".join(p.lower() for p in parts)


@dataclass(frozen=True)
class ServiceSpec:
    """A protected virtual service (from the config's rules.services, checked)."""

    vip: str  # canonical text
    port: int  # 0: every port
    protocol: str  # tcp, udp, sctp
    mode: str  # fwmark, redirect, none
    fwmark: int = 0

    @property
    def family(self) -> int:
        return 6 if ":" in self.vip else 4

    def describe(self) -> str:
        host = f"[{self.vip}]" if self.family == 6 else self.vip
        return f"{self.protocol} {host}:{self.port or '*'}"


@dataclass(frozen=True)
class Rule:
    """One rule: packets to `daddr` (protocol, port; 0 any) from `src_mac` (None: any source)
    get `action`: "mark" (with `value`), "return" (left as they are: counted) or "redirect"."""

    chain: str
    family: int
    daddr: str
    protocol: str
    dport: int
    src_mac: Optional[str]
    action: str
    value: int = 0
    note: str = field(default="", compare=False)
    syn: bool = False  # TCP: only a connection's first packet (SYN without ACK, RST, FIN)

    @property
    def rule_id(self) -> str:
        """8 hex digits naming what the rule does (not its note): equal ids, equal rules."""
        key = "|".join(
            str(x)
            for x in (
                self.chain,
                self.family,
                self.daddr,
                self.protocol,
                self.dport,
                self.src_mac,
                self.action,
                self.value,
            )
        ) + ("|syn" if self.syn else "")
        return hashlib.sha1(key.encode()).hexdigest()[:8]

    @property
    def comment(self) -> str:
        return f"{COMMENT_TAG} {self.rule_id} {self.note}".rstrip()


def comment_id(comment: Optional[str]) -> Optional[str]:
    """The rule id in one of our comments, else None (a rule that is not ours)."""
    if not comment:
        return None
    parts = comment.split()
    if len(parts) >= 2 and parts[0] == COMMENT_TAG and len(parts[1]) == 8:
        return parts[1]
    return None


@dataclass(frozen=True)
class RuleSet:
    """Everything the director needs, both roles: the chains by neutral name, in order."""

    mark: Tuple[Rule, ...] = ()
    redirect_master: Tuple[Rule, ...] = ()
    redirect_backup: Tuple[Rule, ...] = ()

    @property
    def has_redirect(self) -> bool:
        return bool(self.redirect_master or self.redirect_backup)

    @property
    def empty(self) -> bool:
        return not (self.mark or self.has_redirect)

    def chains(self) -> Dict[str, Tuple[Rule, ...]]:
        """The rule chains that exist in this set (the pointer is the backends' business)."""
        out: Dict[str, Tuple[Rule, ...]] = {}
        if self.mark:
            out[MARK] = self.mark
        if self.has_redirect:
            out[REDIRECT_MASTER] = self.redirect_master
            out[REDIRECT_BACKUP] = self.redirect_backup
        return out

    def rules(self) -> List[Rule]:
        return [r for rules in self.chains().values() for r in rules]

    @property
    def digest(self) -> str:
        """Names the whole set, chains and order: equal digests, equal rule sets."""
        text = ";".join(f"{c}:{','.join(r.rule_id for r in rs)}" for c, rs in self.chains().items())
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    @property
    def redirect_families(self) -> List[int]:
        return sorted({r.family for r in self.redirect_master + self.redirect_backup})


# -------------------------------------------------------------------------------- builders


def build_fwmark_rules(service: ServiceSpec, peer_macs: Sequence[str]) -> List[Rule]:
    """The mark chain's rules for one fwmark service: per peer MAC a counted return (packets the
    peer forwarded: this host's real server takes them), then the mark for everything else."""
    service_rule = partial(
        Rule,
        family=service.family,
        daddr=service.vip,
        protocol=service.protocol,
        dport=service.port,
    )
    what = f"fwmark {service.fwmark} {service.describe()}"
    rules = [
        service_rule(MARK, src_mac=mac, action="return", note=f"{what} from peer {mac}")
        for mac in peer_macs
    ]
    rules.append(service_rule(MARK, src_mac=None, action="mark", value=service.fwmark, note=what))
    return rules


def build_redirect_rules(role: str, service: ServiceSpec, peer_macs: Sequence[str]) -> List[Rule]:
    """One role chain's rules for one redirect service.

    backup: every new flow to the local stack. master: new flows from each peer MAC to the
    local stack (a peer that has not yet seen that it lost the VIP still forwards to us), the
    rest counted and left to IPVS.

    TCP: only SYNs. A connection that this director's IPVS delivered locally while it was master
    has no conntrack entry (IPVS untracks what it handles), so after a swap to BACKUP its next
    segment would be a new flow to conntrack: redirected, its destination rewritten, it would
    miss the connection's socket and be answered with a reset. Left alone, it reaches IPVS,
    which delivers it locally by its own connection entry, as before. A redirected connection
    stays redirected by its conntrack entry, SYN or not.
    """
    service_rule = partial(
        Rule,
        ROLE_CHAINS[role],
        family=service.family,
        daddr=service.vip,
        protocol=service.protocol,
        dport=service.port,
        syn=service.protocol == "tcp",
    )
    what = f"redirect {service.describe()}"
    if role == "backup":
        return [service_rule(src_mac=None, action="redirect", note=f"{what} backup")]
    rules = [
        service_rule(src_mac=mac, action="redirect", note=f"{what} from peer {mac}")
        for mac in peer_macs
    ]
    rules.append(service_rule(src_mac=None, action="return", note=f"{what} master: to IPVS"))
    return rules


def build_rule_set(services: Sequence[ServiceSpec], peer_macs: Sequence[str]) -> RuleSet:
    """Both roles' rules for every service, in the order of the config."""
    mark: List[Rule] = []
    master: List[Rule] = []
    backup: List[Rule] = []
    for s in services:
        if s.mode == "fwmark":
            mark.extend(build_fwmark_rules(s, peer_macs))
        elif s.mode == "redirect":
            master.extend(build_redirect_rules("master", s, peer_macs))
            backup.extend(build_redirect_rules("backup", s, peer_macs))
    return RuleSet(tuple(mark), tuple(master), tuple(backup))


# -------------------------------------------------------------------------------- the config


def services_from_config(rules_cfg) -> List[ServiceSpec]:
    """ServiceSpecs from the config's `rules` section, with the checks that span keys (the
    config schema checks each key alone). ConfigError names the key."""
    specs: List[ServiceSpec] = []
    seen: Dict[Tuple[str, int, str], int] = {}
    for i, s in enumerate(rules_cfg.services):
        key = f"rules.services[{i}]"
        vip = str(ipaddress.ip_address(s.vip))
        if s.mode == "fwmark" and s.fwmark == 0:
            raise ConfigError(
                f"config: {key}.fwmark: mode fwmark needs the mark of keepalived's "
                "`virtual_server fwmark N` (an integer 1-4294967295)"
            )
        if s.mode != "fwmark" and s.fwmark:
            raise ConfigError(f"config: {key}.fwmark: only mode fwmark uses a mark (mode {s.mode})")
        if s.mode == "fwmark" and not (rules_cfg.peers or rules_cfg.peer_macs):
            raise ConfigError(
                f"config: {key}: mode fwmark needs the peer directors (rules.peers or "
                "rules.peer_macs): without them their forwarded packets would be marked too"
            )
        ident = (vip, s.port, s.protocol)
        if s.mode != "none" and ident in seen:
            raise ConfigError(
                f"config: {key}: the same service as rules.services[{seen[ident]}] "
                f"({s.protocol} {vip} port {s.port})"
            )
        if s.mode != "none":
            seen[ident] = i
        specs.append(ServiceSpec(vip, s.port, s.protocol, s.mode, s.fwmark))
    return specs


def needs_peer_macs(services: Sequence[ServiceSpec]) -> bool:
    return any(s.mode in ("fwmark", "redirect") for s in services)
