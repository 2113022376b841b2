"""The rule model and its pure builders; the config checks that span keys."""

import pytest

from lvs_hooks.config import parse_config
from lvs_hooks.errors import ConfigError
from lvs_hooks.rules.model import (
    MARK,
    REDIRECT_BACKUP,
    REDIRECT_MASTER,
    Rule,
    ServiceSpec,
    build_fwmark_rules,
    build_redirect_rules,
    build_rule_set,
    comment_id,
    normalize_mac,
    role_of,
    services_from_config,
)

WEB = ServiceSpec("10.0.0.100", 80, "tcp", "fwmark", 1)
TLS = ServiceSpec("10.0.0.100", 443, "tcp", "redirect")
DNS6 = ServiceSpec("fd00::100", 53, "udp", "redirect")
PEERS = ["52:54:00:00:00:02", "52:54:00:00:00:03"]


def test_fwmark_rules_leave_each_peer_alone_then_mark_the_rest():
    rules = build_fwmark_rules(WEB, PEERS)
    assert [(r.chain, r.src_mac, r.action, r.value) for r in rules] == [
        (MARK, PEERS[0], "return", 0),
        (MARK, PEERS[1], "return", 0),
        (MARK, None, "mark", 1),
    ]
    assert all(
        (r.daddr, r.protocol, r.dport, r.family) == ("10.0.0.100", "tcp", 80, 4) for r in rules
    )


def test_redirect_backup_takes_everything_master_only_the_peers():
    assert [(r.chain, r.src_mac, r.action) for r in build_redirect_rules("backup", TLS, PEERS)] == [
        (REDIRECT_BACKUP, None, "redirect")
    ]
    assert [(r.chain, r.src_mac, r.action) for r in build_redirect_rules("master", TLS, PEERS)] == [
        (REDIRECT_MASTER, PEERS[0], "redirect"),
        (REDIRECT_MASTER, PEERS[1], "redirect"),
        (REDIRECT_MASTER, None, "return"),  # counted, left to IPVS
    ]
    # without peer MACs the master chain only counts
    assert [r.action for r in build_redirect_rules("master", TLS, [])] == ["return"]
    # TCP: new connections only (see build_redirect_rules); UDP and fwmark: every packet
    assert all(
        r.syn for role in ("master", "backup") for r in build_redirect_rules(role, TLS, PEERS)
    )
    assert not any(r.syn for r in build_redirect_rules("backup", DNS6, PEERS))
    assert not any(r.syn for r in build_fwmark_rules(WEB, PEERS))


def test_rule_set_chains_and_families():
    rs = build_rule_set([WEB, TLS, DNS6, ServiceSpec("10.0.0.100", 22, "tcp", "none")], PEERS[:1])
    assert set(rs.chains()) == {MARK, REDIRECT_MASTER, REDIRECT_BACKUP}
    assert len(rs.mark) == 2 and len(rs.redirect_master) == 4 and len(rs.redirect_backup) == 2
    assert rs.redirect_families == [4, 6]
    assert not rs.empty and rs.has_redirect
    only_mark = build_rule_set([WEB], PEERS[:1])
    assert set(only_mark.chains()) == {MARK} and not only_mark.has_redirect
    assert build_rule_set([], PEERS).empty


def test_rule_ids_name_what_a_rule_does_not_its_note():
    a = Rule(MARK, 4, "10.0.0.100", "tcp", 80, None, "mark", 1, note="one")
    b = Rule(MARK, 4, "10.0.0.100", "tcp", 80, None, "mark", 1, note="other words")
    c = Rule(MARK, 4, "10.0.0.100", "tcp", 80, None, "mark", 2)
    assert a.rule_id == b.rule_id != c.rule_id
    assert len(a.rule_id) == 8
    assert comment_id(a.comment) == a.rule_id
    assert comment_id("a user's comment") is None and comment_id(None) is None


def test_digest_changes_with_any_rule_or_order():
    one = build_rule_set([WEB, TLS], PEERS)
    assert one.digest == build_rule_set([WEB, TLS], PEERS).digest
    assert one.digest != build_rule_set([WEB, TLS], PEERS[:1]).digest
    assert one.digest != build_rule_set([WEB, TLS], list(reversed(PEERS))).digest


def test_role_of_and_macs():
    assert role_of("FAULT") == "backup" and role_of("MASTER") == "master"
    with pytest.raises(ValueError):
        role_of("STOP")
    assert normalize_mac("52-54-00-AB-cd-0F") == "52:54:00:ab:cd:0f"
    for bad in ("52:54:00:ab:cd", "zz:54:00:ab:cd:0f", "5254.00ab.cd0f"):
        with pytest.raises(ValueError):
            normalize_mac(bad)


def rules_cfg(services: str, peers: str = 'peer_macs: ["52:54:00:00:00:02"]'):
    return parse_config(f"rules:\n  {peers}\n  services:\n{services}").rules


def test_services_from_config():
    specs = services_from_config(
        rules_cfg(
            "    - {vip: 10.0.0.100, port: 80, mode: fwmark, fwmark: 1}\n"
            "    - {vip: 'fd00:0::100', port: 53, protocol: udp, mode: redirect}\n"
        )
    )
    assert specs == [
        ServiceSpec("10.0.0.100", 80, "tcp", "fwmark", 1),
        ServiceSpec("fd00::100", 53, "udp", "redirect", 0),  # canonical address
    ]
    assert specs[1].describe() == "udp [fd00::100]:53"


@pytest.mark.parametrize(
    "services, peers, message",
    [
        (
            "    - {vip: 10.0.0.100, port: 80, mode: fwmark}\n",
            None,
            "rules.services[0].fwmark: mode fwmark needs the mark",
        ),
        (
            "    - {vip: 10.0.0.100, port: 80, mode: redirect, fwmark: 3}\n",
            None,
            "rules.services[0].fwmark: only mode fwmark uses a mark",
        ),
        (
            "    - {vip: 10.0.0.100, port: 80, mode: fwmark, fwmark: 1}\n",
            "peers: []",
            "rules.services[0]: mode fwmark needs the peer directors",
        ),
        (
            "    - {vip: 10.0.0.100, port: 80, mode: redirect}\n"
            "    - {vip: 10.0.0.100, port: 80, mode: fwmark, fwmark: 1}\n",
            None,
            "rules.services[1]: the same service as rules.services[0]",
        ),
    ],
)
def test_services_from_config_refuses_what_spans_keys(services, peers, message):
    cfg = rules_cfg(services, peers) if peers else rules_cfg(services)
    with pytest.raises(ConfigError) as e:
        services_from_config(cfg)
    assert message in e.value.format_message()
