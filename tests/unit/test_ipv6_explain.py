"""explain over IPv6 and mixed-family tables says for each template what it says over the IPv4
table (issue 17): the same templates and connections with their origins, addresses mapped
(tests/unit/ipv6_tables.py): the connections each template controls, the timeout it holds,
when it ends and what then."""

from hypothesis import given, settings
from ipv6_tables import render, worlds_and_families

from lvs_hooks.explain import explain
from lvs_hooks.kernel.model import host_port

TIMEOUTS = {"tcp": 900, "tcpfin": 120, "udp": 300}
NOW = 1_700_000_000.0
ADDRESSED = {"client", "service", "real_server", "key", "controls", "timeout_text"}


def decisions(report: dict) -> dict:
    """A template's report but the fields that name addresses, by its key."""
    return {
        tuple(x["key"]): (
            {k: v for k, v in x.items() if k not in ADDRESSED},
            sorted((c["state"], c["expires_s"], c["timeout_s"], c["origin"]) for c in x["controls"]),
        )
        for x in report["templates"]
    }


@settings(max_examples=50, deadline=None)
@given(worlds_and_families())
def test_explain_says_what_it_says_over_the_ipv4_table(wf):
    world, fam = wf
    v4, mixed = render(world), render(world, fam)
    want = explain(v4.sync_table.entries, v4.services, TIMEOUTS, NOW)
    got = explain(mixed.sync_table.entries, mixed.services, TIMEOUTS, NOW)
    assert decisions(got) == {mixed.map4(k): d for k, d in decisions(want).items()}
    assert (got["templates_total"], got["connections_total"]) == (
        want["templates_total"], want["connections_total"])
    by_key = {tuple(x["key"]): x for x in got["templates"]}
    for x in want["templates"]:
        y = by_key[mixed.map4(tuple(x["key"]))]
        _, caddr, _, _, daddr, dport = y["key"]
        assert (y["client"], y["real_server"]) == (caddr, host_port(daddr, dport))
        assert len(y["controls"]) == len(x["controls"])


def test_a_port_zero_services_connection_is_not_a_fwmark_templates():
    # One client, one real server, a fwmark service and a port-zero service: the connection to
    # the port-zero service's address shows the packet's port (5353), and is the port-zero
    # template's, not the fwmark template's (found with the property test above).
    from lvs_hooks.kernel.model import ConnEntry, Destination, Service

    rs = "fd00:1::11"
    fwm = Service(6, None, None, 0, fwmark=1, persistent=True, timeout=360, netmask="128",
                  destinations=(Destination(rs, 0),))
    any_port = Service(6, "UDP", "fd00::101", 0, persistent=True, timeout=360, netmask="128",
                       destinations=(Destination(rs, 0),))
    c = "fd00::20"
    entries = [
        ConnEntry("IP", c, 0, "0:1::", 0, rs, 0, "ASSURED", 100, origin="LOCAL"),
        ConnEntry("UDP", c, 0, "fd00::101", 0, rs, 0, "ASSURED", 100, origin="LOCAL"),
        ConnEntry("UDP", c, 40000, "fd00::101", 5353, rs, 5353, "UDP", 200, origin="LOCAL"),
    ]
    r = explain(entries, [fwm, any_port], TIMEOUTS, NOW)
    controls = {x["service"]: len(x["controls"]) for x in r["templates"]}
    assert controls == {"FWM 1 IPv6": 0, "UDP [fd00::101]:0": 1}
