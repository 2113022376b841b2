"""doctor on the four seed setups (tests/unit/fixtures/seeds/, from ../shared/seeds/): each seed's
real problem is reported, every finding on an original is true, and a corrected version of the
same setup gives no finding at all. Plus the checks one by one, the exit codes and the I/O side
without IPVS (this host)."""

import json
import os
import shutil
import stat

import pytest
from click.testing import CliRunner

from lvs_hooks.cli import cli
from lvs_hooks.config import Config, load_config, parse_config
from lvs_hooks.doctor import (
    DoctorInput,
    Finding,
    KernelFacts,
    PathInfo,
    exit_code,
    gather,
    inspect_path,
    render_report,
    run_checks,
    starter_config,
)
from lvs_hooks.keepalived_conf import KeepalivedSetup, parse_text, read_keepalived_conf

SEEDS = os.path.join(os.path.dirname(__file__), "fixtures", "seeds")


def secure_paths(setup):
    """Every script present, executable and safe (the seeds' hosts, not this one)."""
    return {s.path: PathInfo(s.path, s.path, True, None) for s in setup.scripts}


def seed_input(name, fixed=False, kernel=True):
    base = os.path.join(SEEDS, name, "fixed" if fixed else "")
    setup = KeepalivedSetup.from_conf(read_keepalived_conf(os.path.join(base, "keepalived.conf")))
    yaml_path = os.path.join(base, "lvs-hooks.yaml")
    hooks, hooks_path = Config(), None
    if os.path.exists(yaml_path):
        hooks, hooks_path = load_config(yaml_path, required=True), yaml_path
    facts = KernelFacts()
    kernel_path = os.path.join(base, "kernel.json")
    if kernel and os.path.exists(kernel_path):
        with open(kernel_path) as f:
            facts = KernelFacts.from_dict(json.load(f))
    return DoctorInput(setup=setup, hooks=hooks, kernel=facts, conf_path=base,
                       hooks_config_path=hooks_path, paths=secure_paths(setup))


def checks(report, severity=None):
    return sorted(f["check"] for f in report["findings"]
                  if severity is None or f["severity"] == severity)


# What each original setup really has wrong. Every entry is true of that setup; the first ones
# are the problem its write-up is about.
SEED_FINDINGS = {
    "seed000": [
        # questions 2: a 2.6.32 kernel syncs v0 only, the backup gives templates 180 s
        "sync-version-0",
        # question 3: the synced templates expire on the new master; nothing renews them
        "hooks-not-wired",
        # question 4: the rebooted master preempts with an empty table
        "preempt-without-warmup",
        # the vrrp_sync_group inside global_defs is ignored (keepalived -t: Unknown keyword)
        "keepalived-misplaced-block",
        # lvs_sync_daemon_interface in the instance (keepalived 2 warns: deprecated)
        "sync-daemon-deprecated",
    ],
    "seed001": [
        # the write-up's subject: persistence_timeout (360) shorter than the tcp timeout (900)
        "persistence-shorter-than-timeout",
        "persistence-timeout-default",  # info: the empty persistence_timeout is 360
        # lvs_sync_daemon is commented out on both directors
        "no-sync-daemon",
        "hooks-not-wired",
        "preempt-without-warmup",  # priority 101 vs 100, no nopreempt
        "tcp-no-sloppy",
    ],
    "seed002": [
        # the ping-pong loop of co-located DR directors
        "colocated-no-loop-protection",
    ],
    "seed003": [
        # the mysql connection reset on takeover
        "tcp-no-sloppy",
        # ipvsadm --set 120 60 300: idle connections lose their entry after 2 minutes
        "tcp-timeout-short",
        # -p 60 with tcp 120
        "persistence-shorter-than-timeout",
        "hooks-not-wired",
        "preempt-without-warmup",  # state MASTER, no nopreempt
    ],
}


@pytest.mark.parametrize("seed", sorted(SEED_FINDINGS))
def test_seed_original_reports_its_real_problem(seed):
    report = run_checks(seed_input(seed))
    assert checks(report) == sorted(SEED_FINDINGS[seed]), json.dumps(report, indent=1)
    for f in report["findings"]:
        assert f["evidence"] and f["fix"], f
    assert report["exit_code"] == (2 if checks(report, "error") else 1)


@pytest.mark.parametrize("seed", sorted(SEED_FINDINGS))
def test_seed_fixed_has_no_finding(seed):
    report = run_checks(seed_input(seed, fixed=True))
    assert report["findings"] == [], json.dumps(report["findings"], indent=1)
    assert report["exit_code"] == 0


@pytest.mark.parametrize("seed", sorted(SEED_FINDINGS))
def test_seed_fixed_without_kernel_facts_has_no_finding(seed):
    """Config only (as on a host without IPVS): still nothing false."""
    report = run_checks(seed_input(seed, fixed=True, kernel=False))
    assert report["findings"] == [], json.dumps(report["findings"], indent=1)


def test_seed000_evidence_names_file_and_line():
    report = run_checks(seed_input("seed000"))
    by = {f["check"]: f for f in report["findings"]}
    misplaced = by["keepalived-misplaced-block"]
    assert any(e.endswith("seed000/keepalived.conf:10: vrrp_sync_group VGM")
               for e in misplaced["evidence"]), misplaced
    assert "2.6.32" in " ".join(by["sync-version-0"]["evidence"])
    assert by["sync-version-0"]["severity"] == "error"


def test_seed001_says_where_the_timeouts_come_from():
    by = {f["check"]: f for f in run_checks(seed_input("seed001"))["findings"]}
    f = by["persistence-shorter-than-timeout"]
    assert "360" in f["title"] and "900" in f["title"]
    assert "re-armed with 60 s" in f["fix"]
    # without kernel facts the kernel's defaults are assumed, and said so
    by = {f["check"]: f for f in run_checks(seed_input("seed001", kernel=False))["findings"]}
    assert "assumed" in " ".join(by["persistence-shorter-than-timeout"]["evidence"])


def test_seed002_detected_from_config_alone():
    """No kernel facts: the real server is the instance's own mcast_src_ip."""
    report = run_checks(seed_input("seed002", kernel=False))
    assert checks(report) == ["colocated-no-loop-protection"]


def test_seed002_fixed_mark_rule_must_skip_the_peer_mac():
    d = seed_input("seed002", fixed=True)
    d.kernel.firewall = tuple(
        ln.replace("-m mac ! --mac-source 52:54:00:00:01:0b ", "") for ln in d.kernel.firewall
    )
    f = run_checks(d)["findings"]
    assert [x["check"] for x in f] == ["colocated-no-loop-protection"]
    assert "does not exclude the peer's MAC" in " ".join(f[0]["evidence"])
    d.kernel.firewall = ()
    f = run_checks(d)["findings"]
    assert "no firewall rule sets mark 1" in " ".join(f[0]["evidence"])


def test_seed002_fixed_without_firewall_facts_leaves_a_note():
    d = seed_input("seed002", fixed=True, kernel=False)
    report = run_checks(d)
    assert report["findings"] == []
    assert any("MARK rule" in n for n in report["notes"])


def test_seed003_fix_names_tcp_keepalive_for_stale_connections():
    by = {f["check"]: f for f in run_checks(seed_input("seed003"))["findings"]}
    assert "tcp_keepalive_time" in by["tcp-no-sloppy"]["fix"]
    assert "kernel: net.ipv4.vs.sloppy_tcp = 0" in by["tcp-no-sloppy"]["evidence"]
    assert "120" in by["tcp-timeout-short"]["title"]


# ---- single checks on small configurations ----------------------------------------------------


def conf(text, tmp_path, hooks=None, kernel=None, paths=None, users=None, hooks_path=None):
    path = tmp_path / "keepalived.conf"
    path.write_text(text)
    setup = KeepalivedSetup.from_conf(read_keepalived_conf(str(path)))
    return DoctorInput(
        setup=setup,
        hooks=hooks or Config(),
        kernel=kernel or KernelFacts(),
        conf_path=str(path),
        hooks_config_path=hooks_path,
        paths=secure_paths(setup) if paths is None else paths,
        users=users or {},
    )


WIRED = """global_defs {
    lvs_sync_daemon eth1 VI_1 id 7
    vrrp_notify_fifo /run/lvs-hooks/vrrp.fifo
    vrrp_notify_fifo_script "/usr/bin/lvs-hooks fifo"
    %s
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id 51
    priority 100
    virtual_ipaddress { 10.0.0.100 }
}
virtual_server 10.0.0.100 80 {
    lb_kind NAT
    persistence_timeout 1800
    protocol TCP
    real_server 10.1.0.11 80 { weight 1 }
}
"""


KEYED = "control:\n  key_file: /etc/lvs-hooks/control.key\n"


def hooks_cfg(text):
    return parse_config(text, "lvs-hooks.yaml")


def test_syncid_mismatch_is_an_error(tmp_path):
    d = conf(WIRED % "", tmp_path, hooks=hooks_cfg("sync:\n  syncid: 51\n"), hooks_path="h.yaml")
    r = run_checks(d)
    assert checks(r) == ["syncid-mismatch"] and r["exit_code"] == 2
    assert "id 7 on lvs_sync_daemon" in r["findings"][0]["evidence"][0]
    d = conf(WIRED % "", tmp_path, hooks=hooks_cfg("sync:\n  syncid: 7\n"), hooks_path="h.yaml")
    assert run_checks(d)["findings"] == []


def test_syncid_defaults_to_the_instance_router_id(tmp_path):
    text = (WIRED % "").replace(" id 7", "")
    d = conf(text, tmp_path, hooks=hooks_cfg("sync:\n  syncid: 7\n"), hooks_path="h.yaml")
    f = run_checks(d)["findings"]
    assert [x["check"] for x in f] == ["syncid-mismatch"]
    assert "virtual_router_id 51 of VI_1" in f[0]["evidence"][0]


def test_sync_interface_mismatch(tmp_path):
    d = conf(WIRED % "", tmp_path, hooks=hooks_cfg("sync:\n  syncid: 7\n  interface: eth9\n"),
             hooks_path="h.yaml")
    assert checks(run_checks(d)) == ["sync-interface-mismatch"]


def test_timeouts_with_two_owners(tmp_path):
    text = WIRED % "lvs_timeouts tcp 900 tcpfin 120 udp 300"
    h = hooks_cfg("sync:\n  syncid: 7\nmaster:\n  tcp: 3600\n")
    r = run_checks(conf(text, tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["timeouts-two-owners"]
    h = hooks_cfg("sync:\n  syncid: 7\nmaster:\n  tcp: 3600\ntransitions:\n"
                  "  keepalived_lvs_timeouts: true\n")
    assert run_checks(conf(text, tmp_path, hooks=h, hooks_path="h.yaml"))["findings"] == []
    # keepalived was said to own them, but sets none
    r = run_checks(conf(WIRED % "", tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["timeouts-nobody"]


def test_lvs_timeouts_decide_the_persistence_comparison(tmp_path):
    text = (WIRED % "lvs_timeouts tcp 3600 tcpfin 120 udp 300")
    h = hooks_cfg("sync:\n  syncid: 7\ntransitions:\n  keepalived_lvs_timeouts: true\n")
    r = run_checks(conf(text, tmp_path, hooks=h, hooks_path="h.yaml"))
    f = [x for x in r["findings"] if x["check"] == "persistence-shorter-than-timeout"]
    assert f and "3600" in f[0]["title"] and "lvs_timeouts at" in f[0]["evidence"][1]


def test_hooks_instances_unknown(tmp_path):
    h = hooks_cfg("sync:\n  syncid: 7\ntransitions:\n  instances: [VI_LVS]\n")
    r = run_checks(conf(WIRED % "", tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["hooks-instances-unknown"]


def test_script_security(tmp_path):
    text = (WIRED % "enable_script_security").replace('"/usr/bin/lvs-hooks fifo"',
                                                       '"/opt/x/lvs-hooks fifo"')
    bad = {"/opt/x/lvs-hooks": PathInfo("/opt/x/lvs-hooks", "/opt/x/lvs-hooks", True,
                                        "/opt/x is writable by group 100 or by others")}
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    r = run_checks(conf(text, tmp_path, hooks=h, paths=bad, hooks_path="h.yaml"))
    assert checks(r, "error") == ["script-security"]
    # without enable_script_security it runs, but would be refused once it is on
    text = text.replace("enable_script_security", "")
    r = run_checks(conf(text, tmp_path, hooks=h, paths=bad, hooks_path="h.yaml"))
    assert checks(r, "warning") == ["script-security"]
    missing = {"/opt/x/lvs-hooks": PathInfo("/opt/x/lvs-hooks")}
    r = run_checks(conf(text, tmp_path, hooks=h, paths=missing, hooks_path="h.yaml"))
    assert checks(r) == ["script-missing"]


def test_lvs_hooks_needs_root(tmp_path):
    text = WIRED % "script_user nobody"
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    r = run_checks(conf(text, tmp_path, hooks=h, users={"nobody": 65534}, hooks_path="h.yaml"))
    assert checks(r) == ["script-user"]


def test_backup_only_with_both_daemons(tmp_path):
    text = (WIRED % "").replace("lvs_sync_daemon eth1 VI_1 id 7", "lvs_sync_daemon eth1")
    k = KernelFacts(ipvs=True, sysctls={"backup_only": "1"}, timeouts={"tcp": 900, "tcpfin": 120,
                                                                        "udp": 300})
    r = run_checks(conf(text, tmp_path, kernel=k, hooks=hooks_cfg("sync:\n  syncid: 0\n"),
                        hooks_path="h.yaml"))
    # (no sync id to compare: the lvs_sync_daemon line names neither an id nor an instance)
    assert checks(r) == ["backup-only-both-daemons", "backup-only-reseed"]
    # lvs-hooks' own backup_only switch (0 on MASTER) is not the static sysctl
    h = hooks_cfg("sync:\n  syncid: 0\nrules:\n  backup_only: true\n")
    assert run_checks(conf(text, tmp_path, kernel=k, hooks=h, hooks_path="h.yaml"))["findings"] == []


def test_preemption_gated_by_lvs_hooks_ready_is_fine(tmp_path):
    text = (WIRED % "").replace("    nopreempt\n", "    track_script {\n        warm\n    }\n")
    text += 'vrrp_script warm {\n    script "/usr/bin/lvs-hooks ready"\n    interval 2\n}\n'
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    assert run_checks(conf(text, tmp_path, hooks=h, hooks_path="h.yaml"))["findings"] == []
    ungated = text.replace("        warm\n", "        other\n")
    r = run_checks(conf(ungated, tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["preempt-without-warmup"]
    master = (WIRED % "").replace("state BACKUP", "state MASTER")
    r = run_checks(conf(master, tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["nopreempt-state-master"]


def test_fwmark_nat_real_servers_with_a_port(tmp_path):
    text = """global_defs { lvs_sync_daemon eth1 VI_1 }
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    virtual_router_id 51
}
virtual_server fwmark 3 {
    lb_kind NAT
    persistence_timeout 600
    real_server 10.1.0.11 5000 { weight 1 }
}
"""
    r = run_checks(conf(text, tmp_path))
    assert "fwmark-real-server-port" in checks(r)
    # keepalived clears the port of DR fwmark real servers itself
    r = run_checks(conf(text.replace("NAT", "DR"), tmp_path))
    assert "fwmark-real-server-port" not in checks(r)


def test_misplaced_blocks_and_includes(tmp_path):
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "x.conf").write_text("virtual_server 10.0.0.1 80 {\n}\n")
    exe = tmp_path / "inc" / "y.conf"
    exe.write_text("global_defs {\n}\n")
    exe.chmod(0o755)
    text = ("vrrp_instance A {\n  virtual_server 1.2.3.4 80 {\n  }\n}\n"
            "include inc/*.conf\ninclude nothing/*.conf\n")
    r = run_checks(conf(text, tmp_path))
    assert checks(r) == ["keepalived-conf-skipped", "keepalived-include-nothing",
                         "keepalived-misplaced-block"]
    skipped = next(f for f in r["findings"] if f["check"] == "keepalived-conf-skipped")
    assert "chmod a-x" in skipped["fix"] and str(exe) in skipped["title"]


def test_exit_codes():
    f = lambda sev: Finding("x", sev, "t", ("e",), "fix")  # noqa: E731
    assert exit_code([]) == 0
    assert exit_code([f("info")]) == 0
    assert exit_code([f("info"), f("warning")]) == 1
    assert exit_code([f("warning"), f("error")]) == 2


def test_without_keepalived_conf_the_kernel_services_are_checked():
    from lvs_hooks.kernel.model import Destination, Service

    svc = Service(4, "TCP", "10.0.0.100", 80, persistent=True, timeout=60,
                  destinations=(Destination("10.1.0.11", 80, "droute"),))
    k = KernelFacts(ipvs=True, services=(svc,), timeouts={"tcp": 900, "tcpfin": 120, "udp": 300},
                    sysctls={"sloppy_tcp": "0"})
    r = run_checks(DoctorInput(setup=None, hooks=Config(), kernel=k))
    assert checks(r) == ["no-sync-daemon", "persistence-shorter-than-timeout", "tcp-no-sloppy"]
    assert any(e.startswith("kernel: ") for f in r["findings"] for e in f["evidence"])


# ---- I/O: this host has no IPVS -----------------------------------------------------------------


def test_gather_degrades_without_ipvs(tmp_path):
    path = tmp_path / "keepalived.conf"
    with open(os.path.join(SEEDS, "seed003", "keepalived.conf")) as f:
        path.write_text(f.read())
    d = gather(Config(), str(path), None, proc_root=str(tmp_path / "proc"))
    assert d.setup is not None and d.conf_error is None
    if not d.kernel.ipvs:
        assert any("kernel checks skipped" in n for n in d.notes)
    r = run_checks(d)
    assert "tcp-no-sloppy" in checks(r)


def test_gather_malformed_conf_is_a_finding_with_file_and_line(tmp_path):
    path = tmp_path / "keepalived.conf"
    path.write_text('global_defs {\n  router_id "x\n}\n')
    d = gather(Config(), str(path), None, kernel=KernelFacts())
    r = run_checks(d)
    assert checks(r) == ["keepalived-conf"] and r["exit_code"] == 2
    assert f"{path}:2: unterminated quote" in r["findings"][0]["title"]


def test_gather_default_conf_absent_and_no_ipvs_is_unknown(tmp_path, monkeypatch):
    """Nothing to read: exit 3 (a monitoring check must not say OK), one line naming the path."""
    monkeypatch.setattr("lvs_hooks.doctor.DEFAULT_PATH", str(tmp_path / "nope.conf"))
    d = gather(Config(), None, None, kernel=KernelFacts())
    assert d.setup is None and d.conf_error is None
    r = run_checks(d)
    assert r["exit_code"] == 3 and r["findings"] == []
    assert r["unread"] == [f"keepalived.conf {tmp_path / 'nope.conf'}: no such file; "
                           "keepalived checks skipped"]
    assert "UNKNOWN: nothing to check" in render_report(r)


def test_inspect_path_follows_keepalived_rules(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    info = inspect_path(str(script))
    assert info.exists and info.executable
    # pytest's tmp dirs are root-owned here (root runs the tests) but may be group-writable or
    # owned by another user elsewhere: only the verdict on a writable file is certain
    script.chmod(0o777)
    assert inspect_path(str(script)).insecure
    assert not inspect_path(str(tmp_path / "absent")).exists
    sh = inspect_path("sh")
    assert sh.exists and sh.resolved.startswith("/")
    assert stat.S_ISREG(os.stat(sh.resolved).st_mode)


# ---- the CLI --------------------------------------------------------------------------------------


def run(*args):
    return CliRunner().invoke(cli, list(args))


def hooks_file(tmp_path, text=""):
    p = tmp_path / "lvs-hooks.yaml"
    p.write_text(f"paths:\n  proc_root: {tmp_path / 'proc'}\n{text}")
    return str(p)


def test_cli_doctor_exit_code_and_json(tmp_path):
    cfg = hooks_file(tmp_path)
    conf_path = os.path.join(SEEDS, "seed002", "keepalived.conf")
    r = run("--config", cfg, "doctor", "--keepalived-conf", conf_path, "--json")
    report = json.loads(r.output)
    assert r.exit_code == report["exit_code"]
    assert "colocated-no-loop-protection" in checks(report)
    human = run("--config", cfg, "doctor", "--keepalived-conf", conf_path)
    assert human.exit_code == 2 and "ERROR" in human.output and "fix:" in human.output


def test_cli_doctor_malformed_conf(tmp_path):
    bad = tmp_path / "k.conf"
    bad.write_text("vrrp_instance A {\n  state BACKUP\n")
    r = run("--config", hooks_file(tmp_path), "doctor", "--keepalived-conf", str(bad))
    assert r.exit_code == 2
    assert f"{bad}:1: block 'vrrp_instance' is never closed" in r.output
    assert "Traceback" not in r.output


def test_cli_init_from_keepalived(tmp_path):
    conf_path = os.path.join(SEEDS, "seed003", "fixed", "keepalived.conf")
    r = run("init", "--from-keepalived", conf_path)
    assert r.exit_code == 0, r.output
    cfg = parse_config(r.output, "init output")
    assert cfg.sync.interface == "eth0" and cfg.sync.syncid == 51
    assert cfg.transitions.instances == ("VI_1",)
    out = tmp_path / "lvs-hooks.yaml"
    r = run("init", "--from-keepalived", conf_path, "--output", str(out))
    assert r.exit_code == 0 and out.exists()
    r = run("init", "--from-keepalived", conf_path, "--output", str(out))
    assert r.exit_code == 2 and "exists" in r.output
    # what init derives, doctor accepts
    d = seed_input("seed003", fixed=True)
    d.hooks = load_config(str(out), required=True)
    d.hooks_config_path = str(out)
    assert run_checks(d)["findings"] == []


def test_cli_init_malformed_is_one_line(tmp_path):
    bad = tmp_path / "k.conf"
    bad.write_text("global_defs {\n}\n}\n")
    r = run("init", "--from-keepalived", str(bad))
    assert r.exit_code == 2 and r.output.count("\n") == 1
    assert f"{bad}:3:" in r.output


def test_starter_config_without_sync_daemon_says_so():
    setup = KeepalivedSetup.from_conf(parse_text("vrrp_instance X {\n virtual_router_id 9\n}\n"))
    text = starter_config(setup)
    cfg = parse_config(text, "starter")
    assert cfg.sync.syncid == 0 and "no lvs_sync_daemon" in text
    assert cfg.transitions.instances == ("X",)


def test_starter_config_prefers_the_sync_group():
    setup = KeepalivedSetup.from_conf(parse_text(
        "global_defs {\n lvs_sync_daemon eth1 A id 3 port 9000 group 239.1.1.1\n}\n"
        "vrrp_sync_group G {\n group {\n  A\n  B\n }\n}\n"
        "vrrp_instance A {\n virtual_router_id 9\n}\nvrrp_instance B {\n}\n"
        "global_defs {\n lvs_timeouts tcp 7200\n}\n"))
    cfg = parse_config(starter_config(setup), "starter")
    assert (cfg.sync.interface, cfg.sync.syncid, cfg.sync.port, cfg.sync.group) == (
        "eth1", 3, 9000, "239.1.1.1")
    assert cfg.transitions.instances == ("G",)
    assert cfg.transitions.keepalived_lvs_timeouts is True


COLOCATED = """global_defs {
    vrrp_notify_fifo /run/lvs-hooks/vrrp.fifo
    vrrp_notify_fifo_script "/usr/bin/lvs-hooks fifo"
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    virtual_router_id 51
    unicast_src_ip 10.0.0.1
    unicast_peer {
        10.0.0.2
    }
}
virtual_server %s {
    lb_kind DR
    protocol TCP
    real_server 10.0.0.1 80 { weight 1 }
    real_server 10.0.0.2 80 { weight 1 }
}
"""


def test_colocated_protected_by_lvs_hooks_rules(tmp_path):
    redirect = hooks_cfg("rules:\n  services:\n    - {vip: 10.0.0.100, port: 80, mode: redirect}\n")
    r = run_checks(conf(COLOCATED % "10.0.0.100 80", tmp_path, hooks=redirect, hooks_path="h"))
    assert r["findings"] == []
    # marking for a fwmark service keepalived does not have protects nothing
    mark = hooks_cfg("rules:\n  services:\n    - {vip: 10.0.0.100, port: 80, fwmark: 5}\n")
    r = run_checks(conf(COLOCATED % "10.0.0.100 80", tmp_path, hooks=mark, hooks_path="h"))
    assert checks(r) == ["colocated-no-loop-protection"]
    r = run_checks(conf(COLOCATED % "fwmark 5", tmp_path, hooks=mark, hooks_path="h"))
    assert r["findings"] == []
    # redirect rules that keepalived never swaps (lvs-hooks not run by keepalived)
    unwired = (COLOCATED % "10.0.0.100 80").replace("vrrp_notify_fifo_script", "#")
    r = run_checks(conf(unwired, tmp_path, hooks=redirect, hooks_path="h"))
    assert checks(r) == ["colocated-no-loop-protection"]
    assert "does not run lvs-hooks" in " ".join(r["findings"][0]["evidence"])


GATE = """track_file lvs_hooks_warmup {
    file "/run/lvs-hooks/warmup.track"
    %s
    init_file 1 overwrite
}
"""


def gated(weight_line, instance_ref="        lvs_hooks_warmup\n"):
    text = GATE % weight_line + (WIRED % "").replace(
        "    nopreempt\n", "    track_file {\n" + instance_ref + "    }\n"
    )
    return text


def test_the_warmup_gate_as_the_example_writes_it_is_a_gate(tmp_path):
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    r = run_checks(conf(gated("weight -60"), tmp_path, hooks=h, hooks_path="h.yaml"))
    assert r["findings"] == []
    # the same with keepalived 2.0's name for the block
    old = gated("weight -60").replace("track_file lvs_hooks_warmup", "vrrp_track_file lvs_hooks_warmup")
    assert run_checks(conf(old, tmp_path, hooks=h, hooks_path="h.yaml"))["findings"] == []


def test_a_gate_of_weight_0_is_an_error_and_without_weight_a_warning(tmp_path):
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    r = run_checks(conf(gated("weight 0"), tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["warmup-gate-weight"] and r["exit_code"] == 2
    assert "FAULT" in r["findings"][0]["title"]
    r = run_checks(conf(gated(""), tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r, "warning") == ["warmup-gate-weight"]
    assert "keepalived's default, 1" in r["findings"][0]["evidence"][0]


def test_an_instance_weight_overrides_the_track_file_weight(tmp_path):
    h = hooks_cfg("sync:\n  syncid: 7\n" + KEYED)
    fixed = gated("weight 0", "        lvs_hooks_warmup weight -80\n")
    assert run_checks(conf(fixed, tmp_path, hooks=h, hooks_path="h.yaml"))["findings"] == []
    broken = gated("weight -60", "        lvs_hooks_warmup weight 0\n")
    r = run_checks(conf(broken, tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["warmup-gate-weight"]
    assert "weight 0" in r["findings"][0]["evidence"][0]


def test_cli_doctor_named_file_missing_is_unknown(tmp_path):
    missing = tmp_path / "absent.conf"
    r = run("--config", hooks_file(tmp_path), "doctor", "--keepalived-conf", str(missing))
    assert r.exit_code == 3, r.output
    assert f"UNKNOWN: keepalived.conf {missing}: no such file" in r.output
    assert "line named" not in r.output


needs_keepalived = pytest.mark.skipif(shutil.which("keepalived") is None,
                                      reason="keepalived not installed")


@needs_keepalived
def test_keepalived_t_complaints_are_findings(tmp_path):
    path = tmp_path / "keepalived.conf"
    path.write_text(WIRED % "lvs_timeouts 7200 120 300")
    r = run_checks(gather(Config(), str(path), None, kernel=KernelFacts()))
    titles = [f["title"] for f in r["findings"] if f["check"] == "keepalived-test"]
    assert any("Unknown option 7200" in t and "lvs_timeouts" in t for t in titles), r
    assert r["exit_code"] == 2


def test_colocated_fix_leads_to_lvs_hooks_rules(tmp_path):
    r = run_checks(conf(COLOCATED % "10.0.0.100 80", tmp_path))
    (f,) = [f for f in r["findings"] if f["check"] == "colocated-no-loop-protection"]
    assert ("rules: {peers: [PEER DIRECTOR], services: [{vip: 10.0.0.100, port: 80, "
            "protocol: tcp, mode: redirect}]}") in f["fix"]
    assert "lvs-hooks-rules.service" in f["fix"] and "iptables" not in f["fix"]


def test_warmup_gate_without_control_key(tmp_path):
    h = hooks_cfg("sync:\n  syncid: 7\n")
    r = run_checks(conf(gated("weight -60"), tmp_path, hooks=h, hooks_path="h.yaml"))
    assert checks(r) == ["warmup-gate-no-control-key"] and r["exit_code"] == 1
    assert "8849/udp" in r["findings"][0]["fix"]
    assert any(n.startswith("open between the directors: VRRP (IP protocol 112)")
               and "8848/udp" in n and "8849/udp" in n for n in r["notes"])


UDP = """global_defs {
    lvs_sync_daemon eth1 VI_1 id 7
}
vrrp_instance VI_1 {
    state BACKUP
    nopreempt
    virtual_router_id 51
    virtual_ipaddress { 10.0.0.100 }
}
virtual_server 10.0.0.100 53 {
    lb_kind NAT
    persistence_timeout 360
    protocol UDP
    real_server 10.1.0.11 53 { weight 1 }
}
"""


def test_lifetimes_offline_udp_persistence_outlives_its_flows(tmp_path):
    r = run_checks(conf(UDP, tmp_path))
    (life,) = r["lifetimes"]
    assert life["persistence_timeout"] == 360
    assert "Persistence 360 s > udp 300 s" in life["master"]
    assert "the master re-arms the template every 60 s" in life["master"]
    assert life["backup"].startswith("the master's timeout: 360 s, 60 s once")
    v0 = KernelFacts(sysctls={"sync_version": "0"})
    (life,) = run_checks(conf(UDP, tmp_path, kernel=v0))["lifetimes"]
    assert life["backup"].startswith("180 s whatever the master's timeout")
    text = render_report(run_checks(conf(UDP, tmp_path)))
    assert "how long a template lives (offline):" in text and "    backup: " in text


def test_init_udp_only_sets_no_sloppy_tcp():
    setup = KeepalivedSetup.from_conf(parse_text(UDP))
    cfg = parse_config(starter_config(setup), "starter")
    assert cfg.master.sysctls == ()
    assert "rules:" not in starter_config(setup)


def test_init_writes_rules_for_colocated_directors():
    setup = KeepalivedSetup.from_conf(parse_text(COLOCATED % "10.0.0.100 80"))
    text = starter_config(setup, local_addrs=("10.0.0.1",))
    cfg = parse_config(text, "starter")
    assert cfg.rules.peers == ("10.0.0.2",)
    (svc,) = cfg.rules.services
    assert (svc.vip, svc.port, svc.protocol, svc.mode) == ("10.0.0.100", 80, "tcp", "redirect")
    assert "lvs-hooks-rules.service" in text
    fw_text = (COLOCATED % "fwmark 5").replace(
        "    unicast_src_ip", "    virtual_ipaddress { 10.0.0.100 }\n    unicast_src_ip")
    fw = KeepalivedSetup.from_conf(parse_text(fw_text))
    (svc,) = parse_config(starter_config(fw), "starter").rules.services
    assert (svc.vip, svc.mode, svc.fwmark) == ("10.0.0.100", "fwmark", 5)


HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "..", "README.md")
EXAMPLES = os.path.join(HERE, "..", "..", "etc", "keepalived")


def quick_start_configs():
    """The keepalived examples the quick start points to, and its own keepalived blocks."""
    out = [os.path.join(EXAMPLES, n) for n in sorted(os.listdir(EXAMPLES))]
    blocks, cur = [], None
    with open(README) as f:
        for line in f:
            if line.startswith("```"):
                cur = [] if cur is None else blocks.append("".join(cur))
            elif cur is not None:
                cur.append(line)
    return out + [b for b in blocks if "vrrp_instance" in b]


@pytest.mark.parametrize("example", quick_start_configs(),
                         ids=lambda x: os.path.basename(x) if x.startswith("/") else "README")
def test_doctor_on_the_quick_start_examples_has_no_error(example, tmp_path):
    path = example
    if not example.startswith("/"):
        path = str(tmp_path / "keepalived.conf")
        with open(path, "w") as f:
            f.write(example)
    # as the quick start does: `init --from-keepalived`, then the control key
    hooks = hooks_cfg(starter_config(KeepalivedSetup.from_conf(read_keepalived_conf(path)))
                      + KEYED)
    d = gather(hooks, path, "lvs-hooks.yaml", kernel=KernelFacts())
    d.paths = secure_paths(d.setup)  # the packaged script path, as installed
    r = run_checks(d)
    assert checks(r, "error") == [], json.dumps(r["findings"], indent=1)
    assert r["exit_code"] in (0, 1)
    print(os.path.basename(path), r["counts"], checks(r))
