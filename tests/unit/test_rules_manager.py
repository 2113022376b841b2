"""apply / verify / remove / show, the transitions' firewall step and the `rules` commands,
against a fake nft (no root, no kernel)."""

import json

import pytest
from click.testing import CliRunner
from rules_fakes import FakeNft

from lvs_hooks.cli import cli
from lvs_hooks.config import parse_config
from lvs_hooks.errors import FirewallError, UsageError
from lvs_hooks.events import transitions
from lvs_hooks.rules import manager as mgr_mod
from lvs_hooks.rules.manager import RulesManager, advise_backup_only, transition_step
from lvs_hooks.rules.nftables import NftBackend

SERVICES = """\
    - {vip: 10.0.0.100, port: 80, protocol: tcp, mode: fwmark, fwmark: 1}
    - {vip: 10.0.0.100, port: 443, protocol: tcp, mode: redirect}
"""


def config_text(tmp_path, services=SERVICES, extra=""):
    return (
        f"paths:\n  state_dir: {tmp_path}/state\n  run_dir: {tmp_path}/run\n"
        f"  proc_root: {tmp_path}/proc\n"
        f'rules:\n  backend: nft\n  peer_macs: ["52:54:00:00:00:02"]\n{extra}'
        f"  services:\n{services}"
    )


@pytest.fixture
def fake(monkeypatch):
    """Every backend chosen from the config is NftBackend on one fake nft."""
    f = FakeNft()
    monkeypatch.setattr(
        mgr_mod, "choose_backend", lambda name: (NftBackend(runner=f), f"fake for {name}")
    )
    return f


def manager(tmp_path, **kw):
    return RulesManager(parse_config(config_text(tmp_path, **kw)), boot_id="b1")


def test_apply_swap_verify_remove(tmp_path, fake):
    m = manager(tmp_path)
    r = m.apply("backup")
    assert r["rules"] == 5 and r["backend"] == "nft"
    assert r["changes"][0] == "create table inet lvs_hooks"
    assert m.verify()["ok"] and m.verify()["role"] == "backup"
    calls = len(fake.calls)
    s = manager(tmp_path).apply("MASTER")  # a new process: state from the files
    assert s["changes"] == ["point redirect_prerouting at redirect_master"]
    # a swap: the pointer batch, then the read-back; no read before it
    assert [c[0][:3] for c in fake.calls[calls:]] == [["nft", "-j", "-f"], ["nft", "-j", "list"]]
    v = m.verify("backup")
    assert not v["ok"] and v["drift"] == ["point redirect_prerouting at redirect_backup"]
    calls = len(fake.calls)
    assert manager(tmp_path).apply("master")["changes"] == []
    assert [c[0][:3] for c in fake.calls[calls:]] == [["nft", "-j", "list"]]  # one read, no more
    gone = m.remove()
    assert gone["changes"] == ["delete table inet lvs_hooks"]
    assert not (tmp_path / "run" / "rules-applied.json").exists()
    with pytest.raises(UsageError):
        manager(tmp_path).verify()  # nothing applied: which role?


def test_dry_run_changes_nothing(tmp_path, fake):
    r = manager(tmp_path).apply("backup", dry_run=True)
    assert r["changes"] and '"add"' in r["batch"]
    assert fake.tables == {}
    assert not (tmp_path / "run" / "rules-applied.json").exists()


def test_a_refused_batch_leaves_the_record_alone(tmp_path, fake):
    m = manager(tmp_path)
    m.apply("backup")
    record = (tmp_path / "run" / "rules-applied.json").read_text()
    # the swap is refused, and so is the planned batch after it
    orig = fake._batch
    fake._batch = lambda cmds: fake._err("Error: refused")
    with pytest.raises(FirewallError):
        m.apply("master")
    fake._batch = orig
    assert (tmp_path / "run" / "rules-applied.json").read_text() == record
    assert m.verify()["role"] == "backup"


def test_a_config_change_rewrites_only_what_changed(tmp_path, fake):
    manager(tmp_path).apply("backup")
    fake.bump("redirect_backup", 0, 9)
    more = SERVICES + "    - {vip: 10.0.0.100, port: 8443, protocol: tcp, mode: redirect}\n"
    r = manager(tmp_path, services=more).apply("master")
    assert r["changes"] == [
        "point redirect_prerouting at redirect_master",
        "rewrite chain redirect_master (2 -> 4 rules)",
        "rewrite chain redirect_backup (1 -> 2 rules)",
    ]
    only_web = "    - {vip: 10.0.0.100, port: 80, protocol: tcp, mode: fwmark, fwmark: 1}\n"
    r = manager(tmp_path, services=only_web).apply("master")
    assert r["changes"] == [
        "delete chain redirect_prerouting",
        "delete chain redirect_master",
        "delete chain redirect_backup",
    ]


def test_no_rules_configured_no_firewall_call(tmp_path, fake):
    m = manager(tmp_path, services="    []\n")
    r = m.apply("master")
    assert r["changes"] == [] and "backend" not in r and fake.calls == []
    assert transition_step(m.cfg, "BACKUP")[0] == "no firewall rules configured"


def test_rules_dropped_from_the_config_are_removed(tmp_path, fake):
    manager(tmp_path).apply("backup")
    m = manager(tmp_path, services="    []\n")
    r = m.apply("master")
    assert r["changes"] == ["delete table inet lvs_hooks"]
    assert fake.tables == {}


def test_backup_only(tmp_path, fake):
    vs = tmp_path / "proc" / "sys" / "net" / "ipv4" / "vs"
    vs.mkdir(parents=True)
    (vs / "backup_only").write_text("0\n")
    m = manager(tmp_path, extra="  backup_only: true\n")
    assert m.apply("fault")["backup_only"] == "0 -> 1"
    assert (vs / "backup_only").read_text() == "1\n"
    assert m.verify()["ok"]
    (vs / "backup_only").write_text("0\n")
    v = m.verify()
    assert v["drift"] == ["net.ipv4.vs.backup_only is 0, role backup needs 1"]
    assert m.apply("master")["backup_only"] == "already 0"


def test_backup_only_without_ip_vs_waits_for_the_next_transition(tmp_path, fake):
    # the boot unit runs before keepalived loads ip_vs: not an error
    r = manager(tmp_path, extra="  backup_only: true\n").apply("backup")
    assert r["backup_only"] == "not set: ip_vs not loaded" and r["changes"]


@pytest.mark.parametrize(
    "value, daemons, fits, words",
    [
        (None, None, None, "not available"),
        (0, None, None, "cannot be read"),
        (0, ["backup", "master"], False, "does not fit"),
        (1, ["backup"], True, "one sync daemon at a time (backup now"),
        (0, ["master"], True, "Set rules.backup_only: true"),
        (0, [], None, "no effect"),
    ],
)
def test_advise_backup_only(value, daemons, fits, words):
    a = advise_backup_only(value, daemons, False)
    assert a["fits"] is fits and words in a["advice"]


def test_transition_step_summary_and_figures(tmp_path, fake):
    cfg = parse_config(config_text(tmp_path))
    summary, figures = transition_step(cfg, "BACKUP")
    assert summary.startswith("backup rules: create table inet lvs_hooks, ")
    assert figures["role"] == "backup" and figures["rules"] == 5
    summary, figures = transitions.firewall_step("master", cfg)
    assert summary.startswith("master rules: point redirect_prerouting at redirect_master; 5 rules")


def test_transition_step_names_a_peer_it_could_not_learn(tmp_path, fake, monkeypatch):
    from lvs_hooks.rules import peers

    monkeypatch.setattr(peers, "neighbour_table_mac", lambda addr: None)
    monkeypatch.setattr(peers, "provoke_resolution", lambda addr: None)
    text = config_text(tmp_path, services="    - {vip: 10.0.0.100, port: 443, mode: redirect}\n")
    text = text.replace('peer_macs: ["52:54:00:00:00:02"]', "peers: [10.0.0.2]")
    m = RulesManager(
        parse_config(text),
        peer_resolver=lambda p, s, r, required: peers.resolve_peer_macs(
            p, s, r, wait=0.01, required=required, lookup=lambda a: None, provoke=lambda a: None
        ),
    )
    r = m.apply("backup")
    assert r["peers_unknown"] == ["10.0.0.2"] and r["rules"] == 2


# -- the commands


def run(tmp_path, *args, services=SERVICES):
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text(config_text(tmp_path, services=services))
    return CliRunner().invoke(cli, ["--config", str(path), "rules", *args])


def test_cli(tmp_path, fake):
    r = run(tmp_path, "verify")
    assert r.exit_code == 2 and "no role applied since boot" in r.output
    r = run(tmp_path, "apply", "--role", "backup")
    assert r.exit_code == 0 and "role backup: 5 change(s), 5 rules (nft)" in r.output
    assert run(tmp_path, "verify").exit_code == 0
    r = run(tmp_path, "verify", "--role", "master", "--json")
    assert r.exit_code == 9
    assert json.loads(r.output[: r.output.rindex("}") + 1])["drift"]
    r = run(tmp_path, "show")
    assert r.exit_code == 0
    for words in (
        "tcp 10.0.0.100:80",
        "fwmark 1",
        "peer MACs: 52:54:00:00:00:02 (config)",
        "kernel pointer: backup",
        "drift against the applied role: none",
        "net.ipv4.vs.backup_only: n/a",
        "REDIRECT rewrites the VIP",
    ):
        assert words in r.output, r.output
    assert run(tmp_path, "remove", "--dry-run").exit_code == 0 and fake.tables
    assert run(tmp_path, "remove").exit_code == 0 and not fake.tables


def test_cli_errors(tmp_path, fake):
    r = run(
        tmp_path,
        "apply",
        "--role",
        "backup",
        services="    - {vip: 10.0.0.100, port: 80, mode: fwmark}\n",
    )
    assert r.exit_code == 2 and "mode fwmark needs the mark" in r.output
    fake.refuse = "Error: Could not process rule: Operation not supported"
    r = run(tmp_path, "apply", "--role", "backup")
    assert r.exit_code == 8 and "nft refused the batch" in r.output
    r = run(tmp_path, "apply", "--role", "stop")
    assert r.exit_code == 2
