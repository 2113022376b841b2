"""The director layer: what lvs-hooks does on a director, one use case per module.

Each use case is a pure planner beside a thin function that reads what the planner needs and
hands the plan to the one inject path (inject.py), which owns the transition lock, the IPVS
session, the paced local sender, the verification and the ledger (ledger.py):

- reseed.py: the reseed at a takeover, at the agent's start and by hand;
- keeper.py: renewals of templates whose clients are still connected, while master;
- fwmark_repair.py: fwmark templates the kernel's sync delivered unbound, while backup;
- push_check.py: a complete push received from the master against the local table;
- snapshot.py: the templates and services to disk;
- duties.py: the periodic ones, beside keepalived's events.

Nothing here imports the CLI (lvs_hooks.cli, lvs_hooks.commands) or the event layer above it.
"""

from lvs_hooks.director.state import Director

__all__ = ["Director"]
