"""The nft backend's pure parts and its calls, against a fake nft (rules_fakes.FakeNft)."""

import pytest
from rules_fakes import FakeNft

from lvs_hooks.errors import FirewallError
from lvs_hooks.rules import nftables as nft
from lvs_hooks.rules.model import ServiceSpec, build_rule_set

PEER = "52:54:00:00:00:02"
RS = build_rule_set(
    [
        ServiceSpec("10.0.0.100", 80, "tcp", "fwmark", 1),
        ServiceSpec("10.0.0.100", 443, "tcp", "redirect"),
        ServiceSpec("fd00::100", 0, "udp", "redirect"),
    ],
    [PEER],
)


def test_rule_expr_is_what_nft_lists():
    mark = nft.rule_expr(RS.mark[1])
    assert mark == [
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                "right": "10.0.0.100",
            }
        },
        {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                "right": 80,
            }
        },
        {"counter": None},
        {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 1}},
    ]
    peer = nft.rule_expr(RS.mark[0])
    assert peer[2] == {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ether", "field": "saddr"}},
            "right": PEER,
        }
    }
    assert peer[-1] == {"return": None}
    syn = {
        "match": {
            "op": "==",
            "left": {
                "&": [
                    {"payload": {"protocol": "tcp", "field": "flags"}},
                    ["fin", "syn", "rst", "ack"],
                ]
            },
            "right": "syn",
        }
    }
    assert nft.rule_expr(RS.redirect_backup[0])[2] == syn
    any_port = build_rule_set([ServiceSpec("10.0.0.100", 0, "tcp", "redirect")], [])
    assert nft.rule_expr(any_port.redirect_backup[0])[1:] == [
        syn,
        {"counter": None},
        {"redirect": None},
    ]
    any_port6 = nft.rule_expr(RS.redirect_backup[1])
    assert any_port6[0]["match"]["left"]["payload"]["protocol"] == "ip6"
    assert any_port6[1] == {
        "match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}
    }
    assert any_port6[-1] == {"redirect": None}


def test_plan_from_nothing_is_one_transaction():
    (p,) = nft.NftBackend(runner=FakeNft()).plan(RS, "backup", nft.LiveTable(), {})
    kinds = [(verb, next(iter(obj))) for cmd in p.commands for verb, obj in cmd.items()]
    assert kinds[0] == ("add", "table")
    assert kinds.count(("add", "chain")) == 4
    assert kinds.count(("add", "rule")) == len(RS.rules()) + 1  # + the pointer
    assert p.changes[0] == "create table inet lvs_hooks"


def apply(fake, ruleset, role):
    b = nft.NftBackend(runner=fake)
    b.send(b.plan(ruleset, role, b.read(), {}))
    return b


def test_in_place_nothing_to_do_swap_is_flush_and_add_of_the_pointer():
    fake = FakeNft()
    b = apply(fake, RS, "backup")
    live = b.read()
    assert live.present and b.plan(RS, "backup", live, {}) == []
    assert b.active_role(live) == "backup"
    (p,) = b.plan(RS, "master", live, {})
    assert p.changes == ["point redirect_prerouting at redirect_master"]
    assert [list(c) for c in p.commands] == [["flush"], ["add"]]
    assert p.commands == nft.NftBackend.pointer_plans("master", [4, 6])[0].commands
    fake.bump("redirect_backup", 0, 7)
    b.send([p])
    # the role chains were not touched: counters kept
    rows = {r["rule"]: r["packets"] for r in b.rules_listing(b.read())}
    assert 7 in rows.values()
    assert b.active_role(b.read()) == "master"


def test_drift_is_planned_away_chain_by_chain():
    fake = FakeNft()
    b = apply(fake, RS, "backup")
    fake.chain_rules("mark_prerouting").pop()
    fake.tables[("inet", "lvs_hooks")]["chains"]["stray"] = {"base": None, "rules": []}
    fake.tables[("inet", "lvs_hooks")]["chains"]["redirect_prerouting"]["base"] = (
        "nat",
        "prerouting",
        -100,
        "accept",
    )
    (p,) = b.plan(RS, "backup", b.read(), {})
    assert p.changes == [
        "rewrite chain mark_prerouting (1 -> 2 rules)",
        "recreate chain redirect_prerouting (was ('nat', 'prerouting', -100, 'accept'), "
        "wants ('nat', 'prerouting', -110, 'accept'))",
        "delete chain stray",
    ]
    b.send([p])
    assert b.plan(RS, "backup", b.read(), {}) == []


def test_remove_deletes_the_table():
    fake = FakeNft()
    b = apply(fake, RS, "master")
    (p,) = b.plan(None, "backup", b.read(), {})
    assert p.commands == [{"delete": {"table": {"family": "inet", "name": "lvs_hooks"}}}]
    b.send([p])
    assert not b.read().present
    assert b.plan(None, "backup", b.read(), {}) == []


def test_a_refused_batch_raises_and_changes_nothing():
    fake = FakeNft()
    b = apply(fake, RS, "backup")
    before = repr(fake.tables)
    fake.refuse = "Error: Could not process rule: Operation not supported"
    with pytest.raises(FirewallError) as e:
        b.send(b.plan(RS, "master", b.read(), {}))
    assert "table inet lvs_hooks unchanged" in e.value.format_message()
    assert repr(fake.tables) == before


def test_a_listing_failure_that_is_not_a_missing_table_is_an_error():
    fake = FakeNft()
    apply(fake, RS, "backup")

    def broken(argv, **kw):
        if argv[:4] == ["nft", "-j", "list", "table"]:
            return type("P", (), {"returncode": 1, "stdout": "", "stderr": "Error: EPERM"})()
        return fake(argv, **kw)

    with pytest.raises(FirewallError) as e:
        nft.NftBackend(runner=broken).read()
    assert "EPERM" in e.value.format_message()


def test_record_and_render():
    fake = FakeNft()
    b = apply(fake, RS, "backup")
    live = b.read()
    assert b.record(live) == b.rendered(RS)  # the fake lists what it was given
    text = [r["rule"] for r in b.rules_listing(live)]
    assert any("ether saddr 52:54:00:00:00:02 counter return comment" in t for t in text)
    assert "jump redirect_backup" in text
