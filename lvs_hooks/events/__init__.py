"""keepalived's VRRP events and what this director does on them.

`keepalived` turns keepalived's arguments and FIFO lines into Event values (pure);
`sequencer` runs one transition at a time, the latest event winning; `transitions` holds the
per-state steps; `journal` records every transition for `lvs-hooks history`.
"""
