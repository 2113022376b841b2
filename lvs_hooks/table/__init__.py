"""The director's table in memory, fed by the sync stream, by lvs-hooks' own injections and by a
/proc read when one is cheap (docs/design.md 2.4).

`feed` decodes sync datagrams into the entries a receiving kernel would apply.
"""
