"""The iptables backend: chains the tool owns, changed with `iptables-restore --noflush`.

    mangle  PREROUTING -> LVS-HOOKS-MARK                  (fwmark rules, every role)
    nat     PREROUTING -> LVS-HOOKS-REDIRECT -> LVS-HOOKS-REDIRECT-MASTER
                                             or LVS-HOOKS-REDIRECT-BACKUP

Only our chains and the one jump from each PREROUTING are ever written: --noflush leaves every
other rule of the table as it is. A `:CHAIN - [0:0]` line creates a chain or, in --noflush
mode, empties it, so a chain is rewritten whole; a chain whose rules are already right is not
mentioned, and keeps its counters. IPv6 services go through ip6tables the same way.

Atomicity: iptables-restore hands a table to the kernel at its COMMIT, as one replacement
(legacy) or one nf_tables transaction (nft flavour): a table is never seen half changed. Each
(family, table) that changes is its own call, so that a refusal names the table; a role swap
changes only nat. Tables are not changed together: a batch that touches mangle and nat can be
refused for nat after mangle was replaced (the message says so).

Everything here but `IptablesBackend.read` and `.send` is pure.
"""

import shlex
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from lvs_hooks.errors import FirewallError
from lvs_hooks.rules.model import (
    MARK,
    REDIRECT,
    REDIRECT_BACKUP,
    REDIRECT_MASTER,
    ROLE_CHAINS,
    Rule,
    RuleSet,
    comment_id,
)

PREFIX = "LVS-HOOKS-"
CHAIN = {
    MARK: "LVS-HOOKS-MARK",
    REDIRECT: "LVS-HOOKS-REDIRECT",
    REDIRECT_MASTER: "LVS-HOOKS-REDIRECT-MASTER",
    REDIRECT_BACKUP: "LVS-HOOKS-REDIRECT-BACKUP",
}
TABLE = {MARK: "mangle", REDIRECT: "nat", REDIRECT_MASTER: "nat", REDIRECT_BACKUP: "nat"}
# The chain each table's PREROUTING jumps to.
ENTRY = {"mangle": CHAIN[MARK], "nat": CHAIN[REDIRECT]}
TABLES = ("mangle", "nat")
FAMILIES = (4, 6)

# The tool names of each flavour, per family.
FLAVOURS = {
    "iptables": ("iptables", "ip6tables"),
    "iptables-legacy": ("iptables-legacy", "ip6tables-legacy"),
    "iptables-nft": ("iptables-nft", "ip6tables-nft"),
}
WAIT_SECONDS = 5  # for the xtables lock (legacy): another tool may be changing a table
TIMEOUT = 30


# ------------------------------------------------------------------------------ rendering


def _quote(text: str) -> str:
    """A string as iptables-save prints it (xtables_save_string)."""
    safe = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    if text and all(c in safe for c in text):
        return text
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in text)
    return f'"{escaped}"'


def rule_spec(rule: Rule) -> str:
    """A rule as iptables-save prints it after `-A CHAIN ` (so that a rule read back from the
    kernel compares equal to the one we wrote)."""
    plen = 32 if rule.family == 4 else 128
    parts = [f"-d {rule.daddr}/{plen}", f"-p {rule.protocol}"]
    proto_match = []
    if rule.dport:
        proto_match.append(f"--dport {rule.dport}")
    if rule.syn:
        proto_match.append("--tcp-flags FIN,SYN,RST,ACK SYN")
    if proto_match:
        parts.append(f"-m {rule.protocol} " + " ".join(proto_match))
    if rule.src_mac:
        parts.append(f"-m mac --mac-source {rule.src_mac}")
    parts.append(f"-m comment --comment {_quote(rule.comment)}")
    if rule.action == "mark":
        parts.append(f"-j MARK --set-xmark 0x{rule.value:x}/0xffffffff")
    elif rule.action == "return":
        parts.append("-j RETURN")
    elif rule.action == "redirect":
        parts.append("-j REDIRECT")
    else:
        raise ValueError(f"unknown action {rule.action!r}")
    return " ".join(parts)


def pointer_spec(role: str) -> str:
    return f"-j {CHAIN[ROLE_CHAINS[role]]}"


@dataclass(frozen=True)
class Wanted:
    """One rule we want in a chain: its id (None for the pointer) and its text."""

    rule_id: Optional[str]
    spec: str


def desired_tables(ruleset: RuleSet, role: str, family: int) -> Dict[str, Dict[str, List[Wanted]]]:
    """{table: {chain: [Wanted...]}} of one family for `role`: only tables that have rules."""
    out: Dict[str, Dict[str, List[Wanted]]] = {}
    for neutral, rules in ruleset.chains().items():
        mine = [Wanted(r.rule_id, rule_spec(r)) for r in rules if r.family == family]
        out.setdefault(TABLE[neutral], {})[CHAIN[neutral]] = mine
    # A family without any rule of a table needs nothing there (not even empty chains).
    for table in list(out):
        if not any(out[table].values()):
            del out[table]
    if "nat" in out:
        out["nat"] = {CHAIN[REDIRECT]: [Wanted(None, pointer_spec(role))], **out["nat"]}
    return out


# ------------------------------------------------------------------------------ reading


@dataclass
class LiveRule:
    spec: str
    packets: int = 0
    bytes: int = 0

    @property
    def rule_id(self) -> Optional[str]:
        try:
            words = shlex.split(self.spec)
        except ValueError:
            return None
        for i, w in enumerate(words[:-1]):
            if w == "--comment":
                return comment_id(words[i + 1])
        return None


@dataclass
class LiveTable:
    """Our chains in one table, and the PREROUTING rules that jump to one of them."""

    chains: Dict[str, List[LiveRule]] = field(default_factory=dict)
    jumps: List[str] = field(default_factory=list)  # PREROUTING rule specs targeting our chains


def parse_save(text: str) -> Dict[str, LiveTable]:
    """Our chains per table from `iptables-save -c` output (other chains are not kept)."""
    tables: Dict[str, LiveTable] = {}
    current: Optional[LiveTable] = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            current = tables.setdefault(line[1:], LiveTable())
            continue
        if current is None or line == "COMMIT":
            continue
        if line.startswith(":"):
            name = line[1:].split()[0]
            if name.startswith(PREFIX):
                current.chains.setdefault(name, [])
            continue
        packets = nbytes = 0
        if line.startswith("["):
            counts, _, line = line.partition("] ")
            p, _, b = counts[1:].partition(":")
            packets, nbytes = int(p), int(b)
        if not line.startswith("-A "):
            continue
        _, chain, spec = line.split(" ", 2) if line.count(" ") >= 2 else (None, line[3:], "")
        if chain.startswith(PREFIX):
            current.chains.setdefault(chain, []).append(LiveRule(spec, packets, nbytes))
        elif chain == "PREROUTING":
            words = spec.split()
            if len(words) >= 2 and words[-2] == "-j" and words[-1].startswith(PREFIX):
                current.jumps.append(spec)
    return tables


# ------------------------------------------------------------------------------ planning


def _rule_ok(live: LiveRule, want: Wanted, recorded: Dict[str, str]) -> bool:
    if live.spec == want.spec:
        return True
    # Another iptables version may print a rule otherwise: the text it showed right after we
    # wrote that very rule (recorded then) is as good.
    return (
        want.rule_id is not None
        and recorded.get(want.rule_id) == live.spec
        and (live.rule_id == want.rule_id)
    )


def _chain_ok(live: List[LiveRule], want: List[Wanted], recorded: Dict[str, str]) -> bool:
    return len(live) == len(want) and all(_rule_ok(lr, w, recorded) for lr, w in zip(live, want))


def _describe_chain_change(name: str, live: Optional[List[LiveRule]], want: List[Wanted]) -> str:
    if live is None:
        return f"create {name} ({len(want)} rules)"
    if name == CHAIN[REDIRECT] and len(want) == 1:
        have = live[0].spec.split()[-1] if len(live) == 1 else f"{len(live)} rules"
        return f"point {name} at {want[0].spec.split()[-1]} (was {have})"
    return f"rewrite {name} ({len(live)} -> {len(want)} rules)"


@dataclass
class TablePlan:
    family: int
    table: str
    lines: List[str]
    changes: List[str]


def plan_table(
    family: int,
    table: str,
    want: Dict[str, List[Wanted]],
    live: LiveTable,
    recorded: Dict[str, str],
) -> Optional[TablePlan]:
    """The restore lines that make one table of one family what `want` says (None: nothing to
    do), and the changes in words."""
    entry = ENTRY[table]
    where = f"IPv{family} {table}: "
    decl: List[str] = []
    rules: List[str] = []
    changes: List[str] = []
    for name, wanted in want.items():
        have = live.chains.get(name)
        if have is not None and _chain_ok(have, wanted, recorded):
            continue
        decl.append(f":{name} - [0:0]")  # create, or (--noflush) empty an existing chain
        rules.extend(f"-A {name} {w.spec}" for w in wanted)
        changes.append(f"{where}{_describe_chain_change(name, have, wanted)}")
    jump = f"-j {entry}"
    tail: List[str] = []
    if want:
        good = [j for j in live.jumps if j == jump]
        if not good:
            tail.append(f"-I PREROUTING 1 {jump}")
            changes.append(f"{where}jump PREROUTING -> {entry}")
        extra = [j for j in live.jumps if j != jump] + good[1:]
    else:
        extra = list(live.jumps)
    for j in extra:
        tail.append(f"-D PREROUTING {j}")
        changes.append(f"{where}remove PREROUTING rule '{j}'")
    stale = [c for c in live.chains if c not in want]
    tail.extend(f"-F {c}" for c in stale)
    tail.extend(f"-X {c}" for c in stale)
    changes.extend(f"{where}remove {c}" for c in stale)
    if not (decl or rules or tail):
        return None
    return TablePlan(family, table, [f"*{table}", *decl, *rules, *tail, "COMMIT"], changes)


def plan(
    ruleset: Optional[RuleSet],
    role: str,
    live: Dict[int, Dict[str, LiveTable]],
    recorded: Dict[str, str],
) -> List[TablePlan]:
    """Every table change needed for `role` (`ruleset` None: remove everything of ours)."""
    plans: List[TablePlan] = []
    for family in FAMILIES:
        want = desired_tables(ruleset, role, family) if ruleset is not None else {}
        for table in TABLES:
            p = plan_table(
                family,
                table,
                want.get(table, {}),
                live.get(family, {}).get(table, LiveTable()),
                recorded,
            )
            if p is not None:
                plans.append(p)
    return plans


# ------------------------------------------------------------------------------ the backend


class IptablesBackend:
    """iptables-restore/-save of one flavour ("iptables", "iptables-legacy", "iptables-nft")."""

    def __init__(self, flavour: str = "iptables", runner=subprocess.run):
        if flavour not in FLAVOURS:
            raise ValueError(f"unknown iptables flavour {flavour!r}")
        self.name = flavour
        self._tools = dict(zip(FAMILIES, FLAVOURS[flavour]))
        self._run = runner

    def _tool(self, family: int, what: str) -> str:
        return f"{self._tools[family]}-{what}"

    def _call(self, argv: Sequence[str], stdin: Optional[str] = None) -> str:
        try:
            proc = self._run(
                list(argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT
            )
        except FileNotFoundError:
            raise FirewallError(f"{argv[0]} not found (rules.backend: {self.name})") from None
        except subprocess.TimeoutExpired:
            raise FirewallError(f"{argv[0]} did not finish in {TIMEOUT} s") from None
        if proc.returncode != 0:
            err = " ".join((proc.stderr or proc.stdout or "").split())[:300]
            raise FirewallError(f"{argv[0]} exit {proc.returncode}: {err or 'no message'}")
        return proc.stdout

    def read(self, families: Sequence[int] = FAMILIES) -> Dict[int, Dict[str, LiveTable]]:
        """Our chains as the kernel has them, per family and table, with counters."""
        out: Dict[int, Dict[str, LiveTable]] = {}
        for family in families:
            text = self._call([self._tool(family, "save"), "-c"])
            out[family] = parse_save(text)
        return out

    def plan(self, ruleset, role, live, recorded) -> List[TablePlan]:
        return plan(ruleset, role, live, recorded)

    @staticmethod
    def pointer_plans(role: str, families: Sequence[int]) -> List[TablePlan]:
        """The batch of a role swap when the rest is known to be in place: only the pointer of
        each family (refused if a role chain is missing)."""
        return [
            TablePlan(
                family,
                "nat",
                [
                    "*nat",
                    f":{CHAIN[REDIRECT]} - [0:0]",
                    f"-A {CHAIN[REDIRECT]} {pointer_spec(role)}",
                    "COMMIT",
                ],
                [f"IPv{family} nat: point {CHAIN[REDIRECT]} at {CHAIN[ROLE_CHAINS[role]]}"],
            )
            for family in families
        ]

    def send(self, plans: Sequence[TablePlan]) -> None:
        """One iptables-restore per table; a refused one leaves its table as it was.

        Tables cannot be changed together: when several change, each batch is first checked
        whole (`--test`: parsed and built, not committed), so that what the tool can refuse is
        refused before any table changed; only a refusal by the kernel itself can still come
        after an earlier table was replaced (the message names those)."""
        if len(plans) > 1:
            for p in plans:
                argv = [self._tool(p.family, "restore"), "--noflush", "--test"]
                try:
                    self._call(argv, "\n".join(p.lines) + "\n")
                except FirewallError as e:
                    raise FirewallError(
                        f"nothing changed: IPv{p.family} {p.table} batch refused: "
                        f"{e.format_message()}"
                    ) from None
        done: List[str] = []
        for p in plans:
            argv = [self._tool(p.family, "restore"), "--noflush", "-w", str(WAIT_SECONDS)]
            try:
                self._call(argv, "\n".join(p.lines) + "\n")
            except FirewallError as e:
                before = f"; already changed: {', '.join(done)}" if done else ""
                raise FirewallError(
                    f"IPv{p.family} {p.table} unchanged, {e.format_message()}{before}"
                ) from None
            done.append(f"IPv{p.family} {p.table}")

    @staticmethod
    def batch_text(plans: Sequence[TablePlan]) -> str:
        return "\n".join(f"# {IptablesBackend._tool_name(p)}\n" + "\n".join(p.lines) for p in plans)

    @staticmethod
    def _tool_name(p: TablePlan) -> str:
        return ("iptables" if p.family == 4 else "ip6tables") + f"-restore --noflush ({p.table})"

    @staticmethod
    def rendered(ruleset: RuleSet) -> Dict[str, str]:
        """rule id -> the text we write for it."""
        return {r.rule_id: rule_spec(r) for r in ruleset.rules()}

    @staticmethod
    def record(live: Dict[int, Dict[str, LiveTable]]) -> Dict[str, str]:
        """rule id -> the text the kernel shows for it (kept after an apply, see _rule_ok)."""
        out: Dict[str, str] = {}
        for tables in live.values():
            for t in tables.values():
                for rules in t.chains.values():
                    for r in rules:
                        if r.rule_id:
                            out[r.rule_id] = r.spec
        return out

    @staticmethod
    def rules_listing(live: Dict[int, Dict[str, LiveTable]]) -> List[Dict]:
        """Our rules with their counters, for `rules show`."""
        rows = []
        for family, tables in sorted(live.items()):
            for table in TABLES:
                t = tables.get(table)
                if t is None:
                    continue
                for j in t.jumps:
                    rows.append(_row(family, table, "PREROUTING", j, None))
                for chain, rules in t.chains.items():
                    for r in rules:
                        rows.append(_row(family, table, chain, r.spec, r))
        return rows

    @staticmethod
    def present(live: Dict[int, Dict[str, LiveTable]]) -> bool:
        return any(t.chains or t.jumps for tables in live.values() for t in tables.values())

    @staticmethod
    def active_role(live: Dict[int, Dict[str, LiveTable]]) -> Optional[str]:
        """The role the nat pointer names (None: no pointer, or pointers disagree)."""
        role_of_chain = {CHAIN[c]: r for r, c in ROLE_CHAINS.items()}
        roles = set()
        for tables in live.values():
            nat = tables.get("nat")
            if nat is None or CHAIN[REDIRECT] not in nat.chains:
                continue
            ptr = nat.chains[CHAIN[REDIRECT]]
            roles.add(role_of_chain.get(ptr[0].spec.split()[-1]) if len(ptr) == 1 else None)
        return roles.pop() if len(roles) == 1 else None


def _row(family: int, table: str, chain: str, spec: str, r: Optional[LiveRule]) -> Dict:
    return {
        "family": family,
        "table": table,
        "chain": chain,
        "rule": spec,
        "id": r.rule_id if r else None,
        "packets": r.packets if r else None,
        "bytes": r.bytes if r else None,
    }


def split_counts(rows: Sequence[Dict]) -> Tuple[int, int]:
    """Total packets and bytes of listing rows that have counters."""
    return (
        sum(r["packets"] or 0 for r in rows),
        sum(r["bytes"] or 0 for r in rows),
    )
