"""The nftables backend: a table the tool owns, `inet lvs_hooks`, changed with `nft -j -f -`.

    chain mark_prerouting      type filter hook prerouting priority mangle - 10   (fwmark rules)
    chain redirect_prerouting  type nat hook prerouting priority dstnat - 10      (the pointer:
                                                        jump redirect_master | redirect_backup)
    chain redirect_master, chain redirect_backup

The priorities come before iptables' mangle and nat chains (and IPVS, which is at LOCAL_IN).
A whole change, IPv4 and IPv6 alike, is one JSON batch: one nf_tables transaction, all or
nothing. A chain whose rules are already right is not touched and keeps its counters; one that
is not is flushed and refilled in the same transaction. `remove` deletes the table.

Everything here but `NftBackend.read` and `.send` is pure.
"""

import copy
import json
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

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

FAMILY = "inet"
TABLE_NAME = "lvs_hooks"
CHAIN = {
    MARK: "mark_prerouting",
    REDIRECT: "redirect_prerouting",
    REDIRECT_MASTER: "redirect_master",
    REDIRECT_BACKUP: "redirect_backup",
}
# (type, hook, priority, policy) of the base chains; the others are regular chains.
BASE = {
    CHAIN[MARK]: ("filter", "prerouting", -160, "accept"),
    CHAIN[REDIRECT]: ("nat", "prerouting", -110, "accept"),
}
TIMEOUT = 30

Expr = List[Dict[str, Any]]


# ------------------------------------------------------------------------------ rendering


def _match(left: Dict[str, Any], right: Any) -> Dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": right}}


def _payload(protocol: str, fld: str) -> Dict[str, Any]:
    return {"payload": {"protocol": protocol, "field": fld}}


def rule_expr(rule: Rule) -> Expr:
    """A rule's statements in the form `nft -j list` prints them back (implicit dependencies,
    such as `meta l4proto tcp` before `tcp dport`, left out as nft leaves them out)."""
    expr: Expr = [_match(_payload("ip" if rule.family == 4 else "ip6", "daddr"), rule.daddr)]
    if rule.dport:
        expr.append(_match(_payload(rule.protocol, "dport"), rule.dport))
    elif not rule.syn:  # the flags match implies tcp
        expr.append(_match({"meta": {"key": "l4proto"}}, rule.protocol))
    if rule.syn:
        flags = {"&": [_payload("tcp", "flags"), ["fin", "syn", "rst", "ack"]]}
        expr.append(_match(flags, "syn"))
    if rule.src_mac:
        expr.append(_match(_payload("ether", "saddr"), rule.src_mac))
    expr.append({"counter": None})
    if rule.action == "mark":
        expr.append({"mangle": {"key": {"meta": {"key": "mark"}}, "value": rule.value}})
    elif rule.action == "return":
        expr.append({"return": None})
    elif rule.action == "redirect":
        expr.append({"redirect": None})
    else:
        raise ValueError(f"unknown action {rule.action!r}")
    return expr


def pointer_expr(role: str) -> Expr:
    return [{"jump": {"target": CHAIN[ROLE_CHAINS[role]]}}]


def normalize(expr: Expr) -> Expr:
    """Counter values out: two listings of one rule compare equal."""
    out = copy.deepcopy(expr)
    for stmt in out:
        if "counter" in stmt:
            stmt["counter"] = None
    return out


def expr_key(expr: Expr) -> str:
    return json.dumps(normalize(expr), sort_keys=True)


@dataclass(frozen=True)
class Wanted:
    rule_id: Optional[str]
    comment: Optional[str]
    expr: Expr = field(compare=False)


def desired_chains(ruleset: RuleSet, role: str) -> Dict[str, List[Wanted]]:
    """{chain: [Wanted...]} for `role`, base chains first."""
    out: Dict[str, List[Wanted]] = {}
    chains = ruleset.chains()
    if MARK in chains:
        out[CHAIN[MARK]] = [Wanted(r.rule_id, r.comment, rule_expr(r)) for r in chains[MARK]]
    if ruleset.has_redirect:
        out[CHAIN[REDIRECT]] = [Wanted(None, None, pointer_expr(role))]
        for neutral in (REDIRECT_MASTER, REDIRECT_BACKUP):
            out[CHAIN[neutral]] = [
                Wanted(r.rule_id, r.comment, rule_expr(r)) for r in chains[neutral]
            ]
    return out


# ------------------------------------------------------------------------------ reading


@dataclass
class LiveRule:
    expr: Expr
    comment: Optional[str] = None
    handle: int = 0

    @property
    def rule_id(self) -> Optional[str]:
        return comment_id(self.comment)

    @property
    def counters(self) -> Tuple[Optional[int], Optional[int]]:
        for stmt in self.expr:
            c = stmt.get("counter")
            if isinstance(c, dict):
                return c.get("packets", 0), c.get("bytes", 0)
        return None, None


@dataclass
class LiveChain:
    base: Optional[Tuple[str, str, int, str]]
    rules: List[LiveRule] = field(default_factory=list)


@dataclass
class LiveTable:
    present: bool = False
    chains: Dict[str, LiveChain] = field(default_factory=dict)
    other: List[str] = field(default_factory=list)  # sets, maps ... we never make


def parse_listing(data: Dict[str, Any]) -> LiveTable:
    """Our table from `nft -j list table inet lvs_hooks` (parsed JSON)."""
    t = LiveTable()
    for item in data.get("nftables", []):
        if "table" in item:
            t.present = True
        elif "chain" in item:
            c = item["chain"]
            base = None
            if "hook" in c:
                base = (c.get("type"), c.get("hook"), c.get("prio"), c.get("policy"))
            t.chains[c["name"]] = LiveChain(base)
        elif "rule" in item:
            r = item["rule"]
            t.chains.setdefault(r["chain"], LiveChain(None)).rules.append(
                LiveRule(r.get("expr", []), r.get("comment"), r.get("handle", 0))
            )
        elif "metainfo" not in item:
            t.other.extend(f"{k} {v.get('name', '')}".strip() for k, v in item.items())
    return t


# ------------------------------------------------------------------------------ planning


def _rule_ok(live: LiveRule, want: Wanted, recorded: Dict[str, str]) -> bool:
    if live.comment != want.comment:
        return False
    key = expr_key(live.expr)
    if key == expr_key(want.expr):
        return True
    # Another nft version may print a rule otherwise: what it printed right after we wrote it.
    return want.rule_id is not None and recorded.get(want.rule_id) == key


def _chain_ok(live: LiveChain, name: str, want: List[Wanted], recorded: Dict[str, str]) -> bool:
    if live.base != BASE.get(name):
        return False
    return len(live.rules) == len(want) and all(
        _rule_ok(lr, w, recorded) for lr, w in zip(live.rules, want)
    )


def _obj(kind: str, **kw: Any) -> Dict[str, Any]:
    return {kind: {"family": FAMILY, "table": TABLE_NAME, **kw}}


def _chain_obj(name: str) -> Dict[str, Any]:
    if name in BASE:
        typ, hook, prio, policy = BASE[name]
        return _obj("chain", name=name, type=typ, hook=hook, prio=prio, policy=policy)
    return _obj("chain", name=name)


def _rule_cmd(chain: str, w: Wanted) -> Dict[str, Any]:
    rule: Dict[str, Any] = {"chain": chain, "expr": w.expr}
    if w.comment:
        rule["comment"] = w.comment
    return {"add": _obj("rule", **rule)}


@dataclass
class NftPlan:
    commands: List[Dict[str, Any]]
    changes: List[str]


def plan(
    ruleset: Optional[RuleSet], role: str, live: LiveTable, recorded: Dict[str, str]
) -> Optional[NftPlan]:
    """The one transaction that makes our table what `role` needs (`ruleset` None or empty:
    no table), or None when it already is."""
    want = desired_chains(ruleset, role) if ruleset is not None else {}
    if not want:
        if not live.present:
            return None
        return NftPlan(
            [{"delete": {"table": {"family": FAMILY, "name": TABLE_NAME}}}],
            [f"delete table {FAMILY} {TABLE_NAME}"],
        )
    cmds: List[Dict[str, Any]] = []
    changes: List[str] = []
    if not live.present:
        cmds.append({"add": {"table": {"family": FAMILY, "name": TABLE_NAME}}})
        changes.append(f"create table {FAMILY} {TABLE_NAME}")
    late: List[Dict[str, Any]] = []
    for name, wanted in want.items():
        have = live.chains.get(name)
        if have is not None and _chain_ok(have, name, wanted, recorded):
            continue
        if have is None:
            cmds.append({"add": _chain_obj(name)})
            changes.append(f"create chain {name} ({len(wanted)} rules)")
        elif have.base != BASE.get(name):
            # A chain's hook cannot be changed in place: delete and make it again.
            cmds.extend(
                [
                    {"flush": _obj("chain", name=name)},
                    {"delete": _obj("chain", name=name)},
                    {"add": _chain_obj(name)},
                ]
            )
            changes.append(f"recreate chain {name} (was {have.base}, wants {BASE.get(name)})")
        else:
            cmds.append({"flush": _obj("chain", name=name)})
            if name == CHAIN[REDIRECT]:
                changes.append(f"point {name} at {CHAIN[ROLE_CHAINS[role]]}")
            else:
                changes.append(f"rewrite chain {name} ({len(have.rules)} -> {len(wanted)} rules)")
        late.extend(_rule_cmd(name, w) for w in wanted)
    cmds.extend(late)
    stale = [c for c in live.chains if c not in want]
    cmds.extend({"flush": _obj("chain", name=c)} for c in stale)
    cmds.extend({"delete": _obj("chain", name=c)} for c in stale)
    changes.extend(f"delete chain {c}" for c in stale)
    if not cmds:
        return None
    return NftPlan(cmds, changes)


# ------------------------------------------------------------------------------ the backend


class NftBackend:
    name = "nft"

    def __init__(self, runner=subprocess.run):
        self._run = runner

    def _call(self, argv: Sequence[str], stdin: Optional[str] = None):
        try:
            return self._run(
                list(argv), input=stdin, capture_output=True, text=True, timeout=TIMEOUT
            )
        except FileNotFoundError:
            raise FirewallError("nft not found (rules.backend: nft)") from None
        except subprocess.TimeoutExpired:
            raise FirewallError(f"nft did not finish in {TIMEOUT} s") from None

    @staticmethod
    def _error(proc) -> str:
        return " ".join((proc.stderr or proc.stdout or "").split())[:300] or "no message"

    def read(self, families: Sequence[int] = (4, 6)) -> LiveTable:
        proc = self._call(["nft", "-j", "list", "table", FAMILY, TABLE_NAME])
        if proc.returncode == 0:
            return parse_listing(json.loads(proc.stdout))
        # Failing to list it may just mean that it does not exist: ask for the table list.
        tables = self._call(["nft", "-j", "list", "tables", FAMILY])
        if tables.returncode != 0:
            raise FirewallError(f"nft list tables: {self._error(tables)}")
        names = [
            i["table"]["name"]
            for i in json.loads(tables.stdout).get("nftables", [])
            if "table" in i
        ]
        if TABLE_NAME not in names:
            return LiveTable()
        raise FirewallError(f"nft list table {FAMILY} {TABLE_NAME}: {self._error(proc)}")

    def plan(self, ruleset, role, live, recorded) -> List[NftPlan]:
        p = plan(ruleset, role, live, recorded)
        return [p] if p is not None else []

    @staticmethod
    def pointer_plans(role: str, families: Sequence[int]) -> List[NftPlan]:
        """The batch of a role swap when the rest is known to be in place: only the pointer
        (refused if the table or a role chain is missing)."""
        name = CHAIN[REDIRECT]
        return [
            NftPlan(
                [
                    {"flush": _obj("chain", name=name)},
                    _rule_cmd(name, Wanted(None, None, pointer_expr(role))),
                ],
                [f"point {name} at {CHAIN[ROLE_CHAINS[role]]}"],
            )
        ]

    def send(self, plans: Sequence[NftPlan]) -> None:
        for p in plans:
            proc = self._call(["nft", "-j", "-f", "-"], json.dumps({"nftables": p.commands}))
            if proc.returncode != 0:
                raise FirewallError(
                    f"nft refused the batch, table {FAMILY} {TABLE_NAME} unchanged: "
                    f"{self._error(proc)}"
                )

    @staticmethod
    def batch_text(plans: Sequence[NftPlan]) -> str:
        return "\n".join(
            "# nft -j -f -\n" + json.dumps({"nftables": p.commands}, indent=1) for p in plans
        )

    @staticmethod
    def rendered(ruleset: RuleSet) -> Dict[str, str]:
        """rule id -> the expression we write for it (as `record` keys it)."""
        return {r.rule_id: expr_key(rule_expr(r)) for r in ruleset.rules()}

    @staticmethod
    def record(live: LiveTable) -> Dict[str, str]:
        out: Dict[str, str] = {}
        for chain in live.chains.values():
            for r in chain.rules:
                if r.rule_id:
                    out[r.rule_id] = expr_key(r.expr)
        return out

    @staticmethod
    def rules_listing(live: LiveTable) -> List[Dict]:
        rows = []
        for name, chain in live.chains.items():
            for r in chain.rules:
                packets, nbytes = r.counters
                rows.append(
                    {
                        "family": None,
                        "table": f"{FAMILY} {TABLE_NAME}",
                        "chain": name,
                        "rule": render_text(r.expr, r.comment),
                        "id": r.rule_id,
                        "packets": packets,
                        "bytes": nbytes,
                    }
                )
        return rows

    @staticmethod
    def present(live: LiveTable) -> bool:
        return live.present

    @staticmethod
    def active_role(live: LiveTable) -> Optional[str]:
        ptr = live.chains.get(CHAIN[REDIRECT])
        if ptr is None or len(ptr.rules) != 1:
            return None
        target = (ptr.rules[0].expr[-1].get("jump") or {}).get("target")
        if not isinstance(target, str):
            return None  # not a jump: no role named
        return {CHAIN[c]: r for r, c in ROLE_CHAINS.items()}.get(target)


def render_text(expr: Expr, comment: Optional[str]) -> str:
    """A short nft-like text of a rule for people (`rules show`); not fed back to nft."""
    words: List[str] = []
    for stmt in expr:
        if "match" in stmt:
            m = stmt["match"]
            left = m["left"]
            if "&" in left:
                pl, mask = left["&"]
                name = f"{pl['payload']['protocol']} {pl['payload']['field']} & {','.join(mask)}"
            elif "payload" in left:
                name = f"{left['payload']['protocol']} {left['payload']['field']}"
            else:
                name = f"meta {left.get('meta', {}).get('key')}"
            op = "" if m.get("op") == "==" else f"{m.get('op')} "
            words.append(f"{name} {op}{m['right']}")
        elif "counter" in stmt:
            words.append("counter")
        elif "mangle" in stmt:
            words.append(f"meta mark set {stmt['mangle']['value']:#x}")
        elif "jump" in stmt:
            words.append(f"jump {stmt['jump']['target']}")
        else:
            words.extend(stmt.keys())
    if comment:
        words.append(f'comment "{comment}"')
    return " ".join(words)
