"""The director's table in memory: templates and client connection deadlines, fed by the sync
stream, by lvs-hooks' own injections and by a /proc read when one is cheap (design.md 2.4).

`store.TemplateTable` holds it and answers the planners; `feed` decodes sync datagrams for it;
`dumpfile` writes its snapshot without building an entry per template.
"""

from lvs_hooks.table.store import Expired, FeedStats, ReconcileReport, TemplateTable

__all__ = ["Expired", "FeedStats", "ReconcileReport", "TemplateTable"]
