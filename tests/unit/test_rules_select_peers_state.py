"""Backend selection, peer MAC resolution and the rules' state files."""

import json
from types import SimpleNamespace

import pytest

from lvs_hooks.errors import FirewallError, PeerMacUnknown
from lvs_hooks.rules.iptables import IptablesBackend
from lvs_hooks.rules.nftables import NftBackend
from lvs_hooks.rules.peers import resolve_peer_macs
from lvs_hooks.rules.select import choose_backend
from lvs_hooks.rules.state import Applied, RulesState, StateFile

# -- select


def tools(present, version=""):
    which = lambda name: f"/usr/sbin/{name}" if name in present else None  # noqa: E731
    run = lambda argv, **kw: SimpleNamespace(returncode=0, stdout=version, stderr="")  # noqa: E731
    return which, run


@pytest.mark.parametrize(
    "present, version, expect, why",
    [
        ({"iptables", "nft"}, "iptables v1.8.9 (nf_tables)", "nft", "nf_tables flavour"),
        ({"nft"}, "", "nft", "no iptables"),
        (
            {"iptables", "iptables-legacy-restore", "nft"},
            "iptables v1.8.9 (legacy)",
            "iptables-legacy",
            "legacy flavour",
        ),
        ({"iptables"}, "iptables v1.4.21", "iptables", "legacy flavour"),  # EL7: no flavours
        ({"iptables"}, "iptables v1.8.4 (nf_tables)", "iptables", "no nft"),
    ],
)
def test_auto(present, version, expect, why):
    backend, reason = choose_backend("auto", *tools(present, version))
    assert backend.name == expect and why in reason


def test_auto_without_any_tool_and_explicit_choices():
    with pytest.raises(FirewallError):
        choose_backend("auto", *tools(set()))
    assert isinstance(choose_backend("nft")[0], NftBackend)
    b, why = choose_backend("iptables-nft")
    assert isinstance(b, IptablesBackend) and b.name == "iptables-nft" and "rules.backend" in why


# -- peers

A, B = "10.0.0.1", "10.0.0.2"
MAC_A, MAC_B = "52:54:00:00:00:01", "52:54:00:00:00:02"


def test_config_first_then_neighbour_table():
    out = resolve_peer_macs(
        [B], ["52:54:00:00:00:0A"], {}, lookup={B: MAC_B}.get, provoke=lambda a: None
    )
    assert out.macs == ["52:54:00:00:00:0a", MAC_B]
    assert out.sources == {"52:54:00:00:00:0a": "config", MAC_B: f"neighbour table ({B})"}
    assert out.learned == {B: MAC_B}


def test_recorded_is_used_without_waiting_and_resolution_only_for_the_never_learned():
    provoked = []
    table = {}

    def lookup(addr):
        return table.get(addr)

    def provoke(addr):
        provoked.append(addr)
        table[addr] = MAC_A  # the kernel resolves it

    out = resolve_peer_macs([A, B], [], {B: MAC_B}, lookup=lookup, provoke=provoke, wait=1.0)
    assert provoked == [A]
    assert out.sources == {MAC_A: f"neighbour table ({A})", MAC_B: f"learned before ({B})"}
    assert out.learned == {A: MAC_A}


def test_unknown_peer_required_or_left_out():
    args = dict(lookup=lambda a: None, provoke=lambda a: None, wait=0.05)
    with pytest.raises(PeerMacUnknown) as e:
        resolve_peer_macs([A], [], {}, **args)
    assert "set rules.peer_macs" in e.value.format_message()
    out = resolve_peer_macs([A], [MAC_B], {}, required=False, **args)
    assert out.macs == [MAC_B] and out.missing == [A]


# -- state


def test_state_round_trip_and_boot_scope(tmp_path):
    sf = StateFile(tmp_path / "state", tmp_path / "run", boot_id="boot-1")
    st = sf.load()
    assert st.learned == {} and st.applied is None
    st.learned[B] = MAC_B
    st.applied = Applied("master", "nft", 1.5, [4], "d1", {"abcd1234": "text"})
    sf.save(st)
    again = StateFile(tmp_path / "state", tmp_path / "run", boot_id="boot-1").load()
    assert again.learned == {B: MAC_B}
    assert again.applied == st.applied
    assert again.recorded_text("nft") == {"abcd1234": "text"} and again.recorded_text("x") == {}
    after_reboot = StateFile(tmp_path / "state", tmp_path / "run", boot_id="boot-2").load()
    assert after_reboot.applied is None and after_reboot.learned == {B: MAC_B}


def test_learned_macs_written_only_when_they_change(tmp_path):
    sf = StateFile(tmp_path / "state", tmp_path / "run", boot_id="b")
    st = RulesState({B: MAC_B})
    sf.save(st)
    peers = tmp_path / "state" / "rules-peers.json"
    first = peers.stat().st_mtime_ns
    peers.write_text(peers.read_text())  # touch with the same content
    touched = peers.stat().st_mtime_ns
    sf2 = StateFile(tmp_path / "state", tmp_path / "run", boot_id="b")
    st2 = sf2.load()
    st2.applied = Applied("backup", "nft", 2.0)
    sf2.save(st2)
    assert peers.stat().st_mtime_ns == touched >= first
    assert json.loads((tmp_path / "run" / "rules-applied.json").read_text())["role"] == "backup"
    st2.applied = None
    sf2.save(st2)
    assert not (tmp_path / "run" / "rules-applied.json").exists()


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 99}', b"[]"])
def test_a_damaged_file_is_an_empty_record(tmp_path, content):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "rules-peers.json").write_bytes(content)
    assert StateFile(tmp_path / "state", tmp_path / "run").load() == RulesState()
