"""explain from the agent's table in memory: the agent's answer to an `explain` request and the
command's reading of it.

The table keeps every template and, per client, when its last connection heard of ends, not the
connections one by one (table.store). So the agent sends the templates (rows of a snapshot) and
those ends mapped to the templates they may hold (model.held_templates, the keeper's rule); the
command explains them with the same pure explain() as a read of /proc (`held`). Over
table.read_budget this spares the kernel a whole read of its table, quadratic in its size
(design.md 2.4); within it, or while the table is not the table, the agent says to read /proc.
"""

import json
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from lvs_hooks.door import Streamed
from lvs_hooks.errors import AgentError
from lvs_hooks.kernel.model import (
    ConnEntry,
    Service,
    canonical_addr_or_same,
    held_templates,
    templates_of_client,
)
from lvs_hooks.snapshot import template_from_row, template_row

if TYPE_CHECKING:  # the agent's, passed in by it
    from lvs_hooks.director.live import LiveTable

HELD_CHUNK = 20000  # held rows per piece of a streamed answer


def table_answer(
    live: Optional["LiveTable"], services: Sequence[Service], client: Optional[str]
) -> Union[dict, Streamed]:
    """The agent's answer to `explain` (TableInput reads it): its table in memory, or the
    reason to read the kernel's table instead (`read_kernel`): no table, a table that is not
    the table (not reconciled yet, or a feed dropped datagrams since), or a kernel's table
    within table.read_budget, whose own word costs little (as `status` decides).

    `templates`: rows of snapshot.TEMPLATE_COLUMNS, all (made as they are sent: a million
    templates' rows are not held at once) or those of `client`; `held`: for each (template
    client, service key) a connection heard of may hold (model.held_templates), in seconds from
    `at` (the table's moment, a wall time) when the last one ends; `connections_total`: the
    kernel's entries less the templates (netlink's counts: the table keeps no connection one by
    one)."""
    if live is None:
        return {"read_kernel": "the agent keeps no table in memory"}
    if not live.ready:
        return {"read_kernel": "the table in memory is not the table yet (not reconciled with "
                               "the kernel's since the agent started, or a feed dropped "
                               "datagrams)"}
    within, entries = live.within_budget()
    if within:
        return {"read_kernel": f"the kernel's table holds {entries} entries, within "
                               "table.read_budget"}
    copy, ends, now, at = live.explain_input()
    total = len(copy[0]) + len(copy[1])
    head: Dict[str, Any] = {
        "at": at, "templates_total": total, "connections_total": max(entries - total, 0)
    }
    if client:
        # the client's templates: its own address, or as a service's netmask masks it (the
        # clients' ends are keyed so too: TemplateTable.use_services)
        client = canonical_addr_or_same(client)
        addrs = {client} | {s.template_client(client) for s in services if _same_family(s, client)}
        by_key = {s.key(): s for s in services}
        chosen = templates_of_client(
            live.table.templates_of_clients(now, addrs, copy), by_key, client
        )
        wanted = {(t.caddr, t.service_key()) for t in chosen}
        held = held_templates({k: e for k, e in ends.items() if k[0] in addrs}, services)
        head["templates"] = [template_row(t) for t in chosen]
        head["held"] = [[c, list(k), round(e, 3)] for (c, k), e in held.items() if (c, k) in wanted]
        return head
    held = held_templates(ends, services)
    del ends
    table = live.table

    def rows() -> Iterator[str]:
        for _, text in table.json_rows(now, copy):
            yield text

    def held_rows() -> Iterator[str]:
        items = iter(held.items())
        while True:
            chunk = [[c, list(k), round(e, 3)] for (c, k), e in islice(items, HELD_CHUNK)]
            if not chunk:
                return
            yield json.dumps(chunk, separators=(",", ":"))[1:-1]

    return Streamed(head, {"templates": rows, "held": held_rows})


def _same_family(svc: Service, addr: str) -> bool:
    return svc.af == (6 if ":" in addr else 4)


@dataclass(frozen=True)
class TableInput:
    """The agent's answer to `explain`, checked: the templates of its table in memory (all,
    or those of the client asked about), when each (template client, service key)'s last
    connection heard of ends, as wall times, and the kernel's counts."""

    templates: List[ConnEntry]
    held: Dict[Tuple[str, Tuple], float]
    templates_total: int
    connections_total: int

    @classmethod
    def from_answer(cls, answer: dict) -> Optional["TableInput"]:
        """None when the answer says to read the kernel; AgentError when it is not an answer
        (an agent of another version: the command says so rather than explain wrongly)."""
        if "read_kernel" in answer:
            return None
        try:
            at = float(answer["at"])
            addrs: Dict[Any, bool] = {}
            templates = [template_from_row(r, addrs) for r in answer["templates"]]
            held = {(str(c), tuple(k)): at + float(secs) for c, k, secs in answer["held"]}
            totals = int(answer["templates_total"]), int(answer["connections_total"])
        except (KeyError, TypeError, ValueError) as e:
            raise AgentError(f"the agent's explain answer is not one ({e})") from None
        if any(t is None for t in templates):
            raise AgentError("the agent's explain answer holds a row that is not a template")
        return cls(templates, held, *totals)  # type: ignore[arg-type]  # None ruled out
