"""The full-table push: the master director sends every persistence template it holds (and,
optionally, its connection entries) to the sync group as ordinary v1 sync messages, so that
every backup's kernel holds the whole set, not only the templates of clients seen lately.

- planner.py: pure; the table and the live services -> the entries to push (fwmark templates
  take the real server's configured port, the timeout is what is left of each entry's life).
- sender.py: encodes them (sync.maxlen, sync.syncid), paces them with a token bucket at
  push.rate entries per second, and tells the caller's control channel when a push begins and
  ends, with a digest of every datagram sent.
- collector.py: the receiving side on a backup: a pure collector that checks a push arrived
  whole (same datagrams, same order, same digest) and a socket that listens to the sync group
  beside the kernel's backup daemon.

See design.md section 3.6 for what the receiving kernel does with these messages: it never
re-points a template it already holds, so a push only adds templates and refreshes timeouts.
"""
