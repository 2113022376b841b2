"""Loop protection for directors that are also real servers (DR "ping-pong").

model.py      services, rules and role chains as plain data; the pure builders
iptables.py   backend: chains LVS-HOOKS-* through iptables-restore --noflush (pure planner)
nftables.py   backend: table inet lvs_hooks through nft -j -f - (pure planner)
select.py     the backend for rules.backend (auto: nft unless iptables is legacy)
peers.py      the peer directors' MACs: configured or from the neighbour table
state.py      rules.json: what the kernel accepted, learned MACs
manager.py    apply / verify / remove / show; the transitions' firewall step
"""
