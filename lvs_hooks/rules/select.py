"""Which firewall tool: chosen once per command from rules.backend.

auto: nft when iptables is the nf_tables flavour or absent (our table then lives beside the
user's, in the same nf_tables world); iptables-legacy when iptables is the legacy flavour
(rules in nf_tables and in the legacy tables would both act, in an order hard to follow).
"""

import shutil
import subprocess
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, TypeVar

from lvs_hooks.errors import FirewallError
from lvs_hooks.rules.iptables import FLAVOURS, IptablesBackend
from lvs_hooks.rules.model import RuleSet
from lvs_hooks.rules.nftables import NftBackend


class Plan(Protocol):
    """One atomic batch of a backend."""

    @property
    def changes(self) -> List[str]:
        """The batch in words, for reports and the log."""
        ...


P = TypeVar("P", bound=Plan)
L = TypeVar("L")


class Backend(Protocol[P, L]):
    """What the rules manager needs of a firewall tool. Each backend has its own batches (`P`)
    and its own reading of the kernel (`L`), and takes back only those it made: the manager
    passes them through unopened, and type-checking code generic in P and L keeps it from
    mixing them up."""

    @property
    def name(self) -> str: ...

    def read(self, families: Sequence[int] = ...) -> L: ...

    def plan(
        self, ruleset: Optional[RuleSet], role: str, live: L, recorded: Dict[str, str]
    ) -> List[P]: ...

    def pointer_plans(self, role: str, families: Sequence[int]) -> List[P]: ...

    def send(self, plans: Sequence[P]) -> None: ...

    def batch_text(self, plans: Sequence[P]) -> str: ...

    def rendered(self, ruleset: RuleSet) -> Dict[str, str]: ...

    def record(self, live: L) -> Dict[str, str]: ...

    def rules_listing(self, live: L) -> List[Dict]: ...

    def active_role(self, live: L) -> Optional[str]: ...


# The backend is chosen at run time, so its plan and reading types are not known statically.
AnyBackend = Backend[Any, Any]


def iptables_flavour(
    which: Callable = shutil.which, run: Callable = subprocess.run
) -> Optional[str]:
    """ "nf_tables", "legacy", or None when there is no iptables (or it does not say)."""
    if not which("iptables"):
        return None
    try:
        proc = run(["iptables", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = proc.stdout + proc.stderr
    if "nf_tables" in text:
        return "nf_tables"
    if "legacy" in text:
        return "legacy"
    # iptables before 1.8 has no flavours: it is legacy.
    return "legacy" if proc.returncode == 0 else None


def choose_backend(
    name: str, which: Callable = shutil.which, run: Callable = subprocess.run
) -> Tuple[AnyBackend, str]:
    """The backend for rules.backend `name`, and why it was chosen (for `rules show`)."""
    if name == "nft":
        return NftBackend(), "rules.backend: nft"
    if name in FLAVOURS:
        return IptablesBackend(name), f"rules.backend: {name}"
    if name != "auto":
        raise ValueError(f"unknown backend {name!r}")
    flavour = iptables_flavour(which, run)
    if flavour == "legacy":
        tool = "iptables-legacy" if which("iptables-legacy-restore") else "iptables"
        return IptablesBackend(tool), "auto: iptables is the legacy flavour"
    if which("nft"):
        why = "iptables is the nf_tables flavour" if flavour else "no iptables"
        return NftBackend(), f"auto: {why}"
    if flavour == "nf_tables":
        return IptablesBackend("iptables"), "auto: iptables is the nf_tables flavour, no nft"
    raise FirewallError("rules.backend auto: neither nft nor iptables is installed")
