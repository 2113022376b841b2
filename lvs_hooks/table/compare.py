"""The table in memory against a read of the kernel's table: which templates differ, and how.

Pure: two lists of templates (ConnEntry, `expires` as seconds left when each was taken) in, a
report out. Used by `lvs-hooks table-check` (through the agent) and the lab's accuracy check.

A template is known by its identity (protocol, client, virtual address or fwmark, virtual port,
and its PE data: model.template_id); it differs when one side lacks it, when the two name
another real server, or when their ends are further apart than the tolerance. The kernel's
`expires` is whole seconds and the read takes time, so `tolerance` should cover both.

A template that one side holds with no more than the tolerance left, and the other no longer
holds, is no difference either: both say it ends now, one has let it go (the read and the table
are taken moments apart, and /proc shows 0 s left while a due timer waits for its turn). Lab,
churn: a range of 150 sources that all ended at the moment of the check showed as 104 "only in
the kernel" at 0 s left. They are counted apart (`ending`).
"""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Tuple

from lvs_hooks.kernel.model import ConnEntry, host_port, template_id

EXAMPLES = 10  # of each kind, in the report
_LABELS = {"only_table": "only in the table", "only_kernel": "only in the kernel",
           "other_real_server": "another real server", "other_end": "another end",
           "ending": "on one side only, ending within the tolerance (no difference)"}


@dataclass
class Comparison:
    table: int = 0  # templates in the table in memory
    kernel: int = 0  # templates in the kernel's read
    same: int = 0
    only_table: int = 0
    only_kernel: int = 0
    other_real_server: int = 0
    other_end: int = 0  # same real server, ends further apart than the tolerance
    ending: int = 0  # on one side only, ending within the tolerance: not a difference
    tolerance_s: float = 0.0
    examples: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def mismatches(self) -> int:
        return self.only_table + self.only_kernel + self.other_real_server + self.other_end

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mismatches"] = self.mismatches
        return d

    def _example(self, kind: str, text: str) -> None:
        ex = self.examples.setdefault(kind, [])
        if len(ex) < EXAMPLES:
            ex.append(text)


def _id(e: ConnEntry) -> Tuple:
    return (*template_id(e), e.pe_name, e.pe_data)


def _text(e: ConnEntry) -> str:
    return (f"{e.protocol} {e.caddr} -> {host_port(e.vaddr, e.vport)} via "
            f"{host_port(e.daddr, e.dport)} ({e.expires} s left)")


def compare(
    table: Iterable[ConnEntry], kernel: Iterable[ConnEntry], tolerance: float = 2.0
) -> Comparison:
    """Templates of the two sides (connections are ignored), compared one by one."""
    c = Comparison(tolerance_s=tolerance)
    mine = {_id(e): e for e in table if e.is_template}
    theirs = {_id(e): e for e in kernel if e.is_template}
    c.table, c.kernel = len(mine), len(theirs)
    for k, e in mine.items():
        k_e = theirs.get(k)
        if k_e is None and e.expires <= tolerance:
            c.ending += 1
            c._example("ending", f"{_text(e)}, in the table")
        elif k_e is None:
            c.only_table += 1
            c._example("only_table", _text(e))
        elif (e.daddr, e.dport) != (k_e.daddr, k_e.dport):
            c.other_real_server += 1
            c._example("other_real_server",
                       f"{_text(e)}; the kernel: via {host_port(k_e.daddr, k_e.dport)}")
        elif abs(e.expires - k_e.expires) > tolerance:
            c.other_end += 1
            c._example("other_end", f"{_text(e)}; the kernel: {k_e.expires} s left")
        else:
            c.same += 1
    for k, e in theirs.items():
        if k in mine:
            continue
        if e.expires <= tolerance:
            c.ending += 1
            c._example("ending", f"{_text(e)}, in the kernel")
        else:
            c.only_kernel += 1
            c._example("only_kernel", _text(e))
    return c


def render(c: Comparison) -> str:
    head = (f"table in memory {c.table} templates, the kernel {c.kernel}: {c.same} the same, "
            f"{c.only_table} only in the table, {c.only_kernel} only in the kernel, "
            f"{c.other_real_server} on another real server, {c.other_end} ending more than "
            f"{c.tolerance_s:g} s apart; {c.ending} on one side only, ending within it")
    lines = [head]
    for kind, ex in c.examples.items():
        lines.extend(f"  {_LABELS.get(kind, kind)}: {x}" for x in ex)
    return "\n".join(lines)
