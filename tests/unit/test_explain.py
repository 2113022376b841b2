"""explain: origin, timeout source, predicted end and what then, for each kind of template
(the kernel's rules from docs/design.md; the lab checks the predictions on a real kernel:
tests/lab/scenarios/explain.sh)."""

import json

import pytest
from click.testing import CliRunner

from lvs_hooks.cli import cli, emit, emit_lines
from lvs_hooks.director.ledger import Injection
from lvs_hooks.director.ledger import load as load_injections
from lvs_hooks.director.ledger import record as record_injections
from lvs_hooks.explain import (
    conn_timeout,
    explain,
    explanation_lines,
    kernel_notes,
    parse_release,
    render_explanation,
)
from lvs_hooks.kernel.model import ConnEntry, Destination, Service, template_key
from lvs_hooks.kernel.netlink import SyncDaemon

VIP = "10.0.0.100"
TIMEOUTS = {"tcp": 900, "tcpfin": 120, "udp": 300}
NOW = 1_700_000_000.0


def svc(proto="UDP", timeout=360, netmask="", port=5000):
    return Service(4, proto, VIP, port, scheduler="wrr", persistent=True, timeout=timeout,
                   netmask=netmask, destinations=(Destination("10.1.0.11", 5000),))


def tpl(client="10.0.0.20", expires=100, origin="LOCAL", proto="UDP", state="ASSURED",
        vport=5000):
    return ConnEntry(proto, client, 0, VIP, vport, "10.1.0.11", 5000, state, expires,
                     origin=origin)


def conn(client="10.0.0.20", expires=200, origin="LOCAL", proto="UDP", state="UDP", cport=40000):
    return ConnEntry(proto, client, cport, VIP, 5000, "10.1.0.11", 5000, state, expires,
                     origin=origin)


def one(entries, services=None, **kw):
    r = explain(entries, services if services is not None else [svc()], TIMEOUTS, NOW, **kw)
    assert len(r["templates"]) == 1, r
    return r["templates"][0]


def test_local_without_connections_is_removed_at_its_timer():
    x = one([tpl(expires=100)])
    assert (x["origin"], x["timeout_source"], x["timeout_s"]) == ("LOCAL", "persistence_timeout",
                                                                  360)
    assert x["then"] == "removed" and x["predicted_end"] == NOW + 100.5
    assert x["predicted_end_in_s"] == 100.5 and x["end_if_idle"] == x["predicted_end"]
    assert "scheduled afresh (wrr)" in x["then_text"]
    assert x["controls"] == []


def test_a_live_connection_rearms_it_with_60_s():
    x = one([tpl(expires=40), conn(expires=290)])
    assert x["then"] == "re-armed"
    assert x["predicted_end"] == NOW + 40.5
    # re-armed at 40, 100, 160, 220, 280; the connection ends at 290; removed at 340
    assert x["end_if_idle"] == NOW + 340.5
    assert x["controls"][0]["timeout_source"] == "udp timeout"
    assert x["controls"][0]["timeout_s"] == 300
    # between 0 and 60 s left of a 360 s persistence: which timeout it holds cannot be told
    assert x["timeout_source"] == "persistence_or_rearm" and x["timeout_s"] is None


def test_json_lists_the_connections_a_template_controls(capsys):
    """The report makes each controlled connection's dict as it is read (a million of them
    alive at once cost explain its linearity); --json writes them as a plain list."""
    r = explain([tpl(expires=40), conn(expires=290), conn(expires=10, cport=40001)], [svc()],
                TIMEOUTS, NOW)
    controls = r["templates"][0]["controls"]
    assert len(controls) == 2 and controls[1]["expires_s"] == 10
    assert controls[:1] == [controls[0]] and controls != [controls[0]]
    emit(r, True, render_explanation)
    written = json.loads(capsys.readouterr().out)["templates"][0]["controls"]
    assert written == list(controls)
    assert written[0] == {
        "connection": "UDP 10.0.0.20:40000 -> 10.0.0.100:5000",
        "state": "UDP",
        "expires_s": 290,
        "timeout_s": 300,
        "timeout_source": "udp timeout",
        "origin": "LOCAL",
        "predicted_end": NOW + 290.5,
    }


def test_the_command_writes_the_text_a_line_at_a_time_and_json_whole(capsys):
    """emit_lines, as `explain` writes: the same text render_explanation makes at once, and the
    same JSON as emit."""
    r = explain([tpl(expires=40), conn(expires=290), conn(expires=10, cport=40001)], [svc()],
                TIMEOUTS, NOW)
    emit_lines(r, False, explanation_lines)
    assert capsys.readouterr().out == render_explanation(r) + "\n"
    emit_lines(r, True, explanation_lines)
    streamed = capsys.readouterr().out
    emit(r, True, render_explanation)
    assert streamed == capsys.readouterr().out and json.loads(streamed)["templates"]


def test_connections_that_end_first_leave_it_to_its_timer():
    x = one([tpl(expires=100), conn(expires=30)])
    assert x["then"] == "removed" and x["predicted_end"] == NOW + 100.5
    assert "end first if no more packets come" in x["then_text"]


def test_more_left_than_persistence_but_at_most_60_is_a_rearm():
    x = one([tpl(expires=45), conn(expires=250)], [svc(timeout=20)])
    assert (x["timeout_source"], x["timeout_s"]) == ("rearm", 60)
    assert "20 s persistence_timeout ran out" in x["timeout_text"]


def test_not_assured_still_ends_at_its_timer():
    """ip_vs_conn_expire drops a non-assured template with a connection only when that one is
    expired at once (timeout 0); a connection that times out leaves it to its timer."""
    x = one([tpl(expires=300, state="NONE"), conn(expires=12)])
    assert x["then"] == "removed" and x["predicted_end"] == NOW + 300.5
    assert "not ASSURED" in x["then_text"]


def test_below_persistence_and_below_60_cannot_be_told():
    x = one([tpl(expires=15)], [svc(timeout=40)])
    assert x["timeout_source"] == "persistence_or_rearm" and "its 40 s" in x["timeout_text"]
    x = one([tpl(expires=100)], [svc(timeout=360)])
    assert x["timeout_source"] == "persistence_timeout"


def test_synced_connections_are_never_linked():
    x = one([tpl(expires=100, origin="SYNC"), conn(expires=250, origin="SYNC")],
            daemons=[SyncDaemon("master", "eth1", 51)])
    assert x["controls"] == [] and x["synced_connections_not_linked"] == 1
    assert x["then"] == "removed"
    assert "never linked" in x["then_text"] and "keeper" in x["then_text"]
    # a connection this director scheduled itself through the synced template is linked
    x = one([tpl(expires=100, origin="SYNC"), conn(expires=250, origin="LOCAL")],
            daemons=[SyncDaemon("master", "eth1", 51)])
    assert x["then"] == "re-armed" and len(x["controls"]) == 1


def test_sync_on_a_backup_may_be_refreshed_by_the_master():
    x = one([tpl(expires=100, origin="SYNC")], daemons=[SyncDaemon("backup", "eth1", 51)])
    assert x["origin"] == "SYNC" and x["timeout_source"] == "sync"
    assert "the master re-sends it" in x["then_text"]
    assert "persistence_timeout 360 s" in x["timeout_text"]


def test_version_0_kernel_gives_180_s():
    r = explain([tpl(expires=150, origin="SYNC")], [svc()], TIMEOUTS, NOW,
                release="2.6.32-71.el6.x86_64")
    x = r["templates"][0]
    assert (x["timeout_source"], x["timeout_s"]) == ("sync_v0", 180)
    assert any("version 0 only" in n for n in r["kernel_notes"])


def test_more_than_persistence_on_a_synced_template():
    x = one([tpl(expires=150, origin="SYNC")], [svc(timeout=60)])
    assert x["timeout_source"] == "sync" and "version-0" in x["timeout_text"]


def test_injected_template_from_the_ledger(tmp_path):
    t = tpl(expires=25, origin="SYNC")
    record_injections(str(tmp_path), [(template_key(t), 30)], "reseed", now=NOW - 5)
    ledger = load_injections(str(tmp_path))
    assert ledger == {template_key(t): Injection(NOW - 5, 30, "reseed")}
    x = one([t], injections=ledger)
    assert (x["origin"], x["timeout_source"], x["timeout_s"]) == ("injected", "injected", 30)
    assert "sticks" in x["timeout_text"] and x["predicted_end"] == NOW + 25.5
    # more time left than was injected: a master's message replaced it since
    x = one([tpl(expires=200, origin="SYNC")], injections=ledger)
    assert x["origin"] == "SYNC"
    # a LOCAL template is never the injected one
    x = one([tpl(expires=20, origin="LOCAL")], injections=ledger)
    assert x["origin"] == "LOCAL"


def test_ledger_drops_old_entries_and_survives_garbage(tmp_path):
    old = tpl(client="10.0.0.30")
    record_injections(str(tmp_path), [(template_key(old), 30)], "keeper", now=NOW - 10000)
    record_injections(str(tmp_path), [(template_key(tpl()), 30)], "reseed", now=NOW)
    assert list(load_injections(str(tmp_path))) == [template_key(tpl())]
    (tmp_path / "injected.json").write_text("{not json")
    assert load_injections(str(tmp_path)) == {}
    assert load_injections(str(tmp_path / "absent")) == {}


def test_client_filter_and_persistence_netmask():
    s = svc(netmask="255.255.255.0")
    entries = [tpl(client="10.0.0.0", expires=100), tpl(client="10.9.0.0", expires=100),
               conn(client="10.0.0.77", expires=200)]
    r = explain(entries, [s], TIMEOUTS, NOW, client="10.0.0.77")
    assert [x["client"] for x in r["templates"]] == ["10.0.0.0"]
    assert r["templates"][0]["then"] == "re-armed"  # the /24's connection holds it
    assert r["templates_total"] == 2


def test_fwmark_template_controls_the_marked_connections():
    fw = Service(4, None, None, 0, fwmark=1, persistent=True, timeout=300,
                 destinations=(Destination("10.1.0.11", 5000),))
    t = ConnEntry("IP", "10.0.0.20", 0, "0.0.0.1", 0, "10.1.0.11", 5000, "ASSURED", 50,
                  origin="LOCAL")
    marked = ConnEntry("TCP", "10.0.0.20", 4242, "10.0.0.102", 443, "10.1.0.11", 5000,
                       "ESTABLISHED", 800, origin="LOCAL")
    other = ConnEntry("UDP", "10.0.0.20", 4243, VIP, 5000, "10.1.0.11", 5000, "UDP", 800,
                      origin="LOCAL")
    r = explain([t, marked, other], [fw, svc()], TIMEOUTS, NOW)
    x = r["templates"][0]
    assert x["service"] == "FWM 1" and x["then"] == "re-armed"
    assert [c["connection"] for c in x["controls"]] == ["TCP 10.0.0.20:4242 -> 10.0.0.102:443"]
    assert x["controls"][0]["timeout_s"] == 900


def test_invalidated_template():
    t = ConnEntry("UDP", "10.0.0.20", 0, VIP, 0xFFFF, "10.1.0.11", 0xFFFF, "ASSURED", 30,
                  origin="SYNC")
    x = one([t], [])
    assert x["then"] == "removed" and "invalidated" in x["then_text"]
    assert x["timeout_source"] == "unknown"


def test_connection_timeouts():
    assert conn_timeout(conn(proto="TCP", state="ESTABLISHED"), TIMEOUTS) == (
        900, "tcp timeout (ESTABLISHED)")
    assert conn_timeout(conn(proto="TCP", state="FIN_WAIT"), TIMEOUTS)[0] == 120
    assert conn_timeout(conn(proto="TCP", state="TIME_WAIT"), TIMEOUTS)[0] == 120
    assert conn_timeout(conn(proto="TCP", state="CLOSE"), TIMEOUTS)[0] == 10
    assert conn_timeout(conn(), TIMEOUTS) == (300, "udp timeout")


def test_kernel_notes():
    assert parse_release("6.1.0-56-amd64") == (6, 1, 0)
    assert parse_release("2.6.32-71.el6.x86_64") == (2, 6, 32)
    assert parse_release(None) is None and parse_release("weird") is None
    notes = kernel_notes("6.1.0-56-amd64", {"sync_version": "0"}, has_origin=False)
    assert any("sync_version is 0" in n for n in notes)
    assert any("ip_vs_conn_sync" in n for n in notes)
    assert any("every kernel version" in n for n in notes)
    notes = kernel_notes("6.1.0-56-amd64", {"sync_version": "1"}, has_origin=True)
    assert any("version 1" in n for n in notes)


def test_render_answers_the_seed000_questions():
    """Seed 000: the 1-minute countdown on the master, the 3 minutes on the (2.6.32) backup."""
    master = explain([tpl(expires=50), conn(expires=280)], [svc()], TIMEOUTS, NOW,
                     release="2.6.32-71.el6.x86_64", daemons=[SyncDaemon("master", "eth0", 51)])
    text = render_explanation(master)
    assert "re-armed with 60 s" in text and "controls 1 connection" in text
    backup = explain([tpl(expires=158, origin="SYNC")], [svc()], TIMEOUTS, NOW,
                     release="2.6.32-71.el6.x86_64", daemons=[SyncDaemon("backup", "eth0", 51)])
    text = render_explanation(backup)
    assert "180 s: a version-0 sync message carries no timeout" in text
    assert "no templates" in render_explanation(explain([], [], None, NOW))


def test_cli_explain_without_ipvs_is_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"paths:\n  proc_root: {tmp_path}\n  run_dir: {tmp_path / 'run'}\n")
    r = CliRunner().invoke(cli, ["--config", str(cfg), "explain"])
    assert r.exit_code == 4 and r.output.count("\n") == 1 and "IPVS" in r.output
    r = CliRunner().invoke(cli, ["--config", str(cfg), "explain", "not-an-ip"])
    assert r.exit_code == 2 and "CLIENT must be an IP address" in r.output


# ---- the timer wheel --------------------------------------------------------------------------


def test_wheel_levels_and_buckets():
    from lvs_hooks.explain import wheel_fire, wheel_level

    # calc_wheel_index: LVL_START(n) = 63 << 3(n-1)
    assert [wheel_level(d) for d in (0, 62, 63, 503, 504, 4031, 4032, 32255, 32256)] == [
        0, 0, 1, 1, 2, 2, 3, 3, 4]
    # level 0 runs one jiffy after the due time; level 4 at the next multiple of 4096
    assert wheel_fire(1000, 10) == 1001
    assert wheel_fire(4096 * 10 + 5, 37500) == 4096 * 11
    assert wheel_fire(4096 * 10, 37500) == 4096 * 11  # never early, even on a boundary


def test_clock_window_at_hz_250():
    """A 150 s template (HZ 250: level 4, buckets of 16.384 s): its end is the bucket's end."""
    from lvs_hooks.explain import Clock

    j = 4096 * 1000 + 100  # jiffies at the read
    clock = Clock(250, j, j, NOW)
    # due 30000-30249 jiffies after j: all within one 4096-jiffy bucket, so one end for the
    # whole second that /proc's rounding leaves open, on the bucket boundary
    lo, hi = clock.window(120, 150)
    assert lo == hi
    assert 120 <= lo - NOW <= 121 + 16.384
    assert ((j + round((lo - NOW) * 250)) % 4096) == 0
    # a 60 s re-arm (level 3, buckets of 512 jiffies = 2.048 s)
    lo, hi = clock.window(45, 60)
    assert hi - lo <= 2.048 + 0.01 and lo - NOW >= 45
    assert clock.late_up_to(60) == 2.048 and clock.late_up_to(150) == 16.384
    lo, hi = Clock(250, j, j, NOW, wheel=False).window(45, 60)
    assert abs(lo - NOW - 45.004) < 1e-6 and abs(hi - NOW - 46.0) < 1e-6


def test_prediction_uses_the_clock():
    from lvs_hooks.explain import Clock

    j = 4096 * 1000 + 100
    clock = Clock(250, j, j, NOW)
    r = explain([tpl(expires=120)], [svc(timeout=150)], TIMEOUTS, NOW, clock=clock)
    x = r["templates"][0]
    assert x["end_window"][0] == x["end_window"][1] == x["predicted_end"]
    assert x["predicted_end"] - NOW > 121  # later than /proc alone says
    assert x["timer_late_up_to_s"] == 16.38
    assert r["hz"] == 250 and any("timer wheel" in n for n in r["kernel_notes"])
    # ambiguous timeout (persistence 360 or a 60 s re-arm): the window covers both
    x = one([tpl(expires=30)], clock=clock)
    assert x["timeout_source"] == "persistence_or_rearm"
    assert x["end_window"][1] - x["end_window"][0] > 1


def test_jiffies_and_hz_from_proc(tmp_path):
    from lvs_hooks.explain import kernel_hz, read_jiffies

    (tmp_path / "schedstat").write_text("version 15\ntimestamp 4295123456\ncpu0 0 0\n")
    assert read_jiffies(str(tmp_path)) == 4295123456
    (tmp_path / "schedstat").unlink()
    (tmp_path / "timer_list").write_text("Timer List Version: v0.9\nnow at 1 nsecs\n"
                                         "jiffies: 4295000001\n")
    assert read_jiffies(str(tmp_path)) == 4295000001
    assert read_jiffies(str(tmp_path / "none")) is None
    import gzip

    with gzip.open(tmp_path / "config.gz", "wt") as f:
        f.write("CONFIG_X=y\nCONFIG_HZ=300\n")
    assert kernel_hz("no-such-release", str(tmp_path)) == 300


@pytest.mark.parametrize("per_part", [1024, 8, 1])
def test_one_pass_gives_each_template_the_connections_a_whole_scan_would(per_part, monkeypatch):
    """explain reads each connection once per netmask in one pass over the table, not once per
    template: each template's report must be the one a whole scan gives (explain_template over
    every connection), on a mixed table (netmasks, fwmark, IPv6, synced and local, several real
    servers, a client with two templates). Split into parts (a big table's pass) or not, and
    with each template's connections in the table's order."""
    import random

    import lvs_hooks.explain

    monkeypatch.setattr(lvs_hooks.explain, "TEMPLATES_PER_PART", per_part)

    from lvs_hooks.explain import controlled_connections, explain_template
    rnd = random.Random(7)
    s24 = svc(netmask="255.255.255.0")
    s6 = Service(6, "UDP", "fd00::100", 5000, persistent=True, timeout=360, netmask="64",
                 destinations=(Destination("fd00:1::11", 5000),))
    fw = Service(4, None, None, 0, fwmark=1, persistent=True, timeout=300,
                 destinations=(Destination("10.1.0.11", 5000), Destination("10.1.0.12", 5000)))
    services = [s24, s6, fw]
    entries = []
    for i in range(300):
        origin = rnd.choice(["LOCAL", "SYNC"])
        rs = rnd.choice(["10.1.0.11", "10.1.0.12"])
        kind = rnd.choice(["v4", "v6", "fw"])
        if kind == "v4":
            c = f"10.0.{rnd.randrange(4)}.{rnd.randrange(1, 250)}"
            entries.append(ConnEntry("UDP", c, 40000 + i, VIP, 5000, rs, 5000, "UDP", 100,
                                     origin=origin))
            entries.append(ConnEntry("UDP", c.rsplit(".", 1)[0] + ".0", 0, VIP, 5000, rs, 5000,
                                     "ASSURED", 50, origin=origin))
        elif kind == "v6":
            c = f"fd00:{rnd.randrange(3)}::{rnd.randrange(1, 999):x}"
            entries.append(ConnEntry("UDP", c, 40000 + i, "fd00::100", 5000, "fd00:1::11", 5000,
                                     "UDP", 100, origin=origin))
            entries.append(ConnEntry("UDP", c.split("::")[0] + "::", 0, "fd00::100", 5000,
                                     "fd00:1::11", 5000, "ASSURED", 50, origin=origin))
        else:
            c = f"10.2.0.{rnd.randrange(1, 60)}"
            entries.append(ConnEntry("TCP", c, 40000 + i, "10.0.0.102", 443, rs, 5000,
                                     "ESTABLISHED", 100, origin=origin))
            entries.append(ConnEntry("IP", c, 0, "0.0.0.1", 0, rs, 5000, "ASSURED", 50,
                                     origin=origin))
    by_key = {s.key(): s for s in services}
    addr_keys = [s.key() for s in services if not s.fwmark]
    templates = [e for e in entries if e.is_template]
    linked_total = 0
    for t in templates:
        whole = controlled_connections(t, entries, by_key[t.service_key()], addr_keys)
        linked_total += len(whole[0]) + len(whole[1])
    assert linked_total > len(templates)  # the table really pairs them
    daemons = [SyncDaemon("master", "eth1", 51)]
    r = explain(entries, services, TIMEOUTS, NOW, daemons=daemons)
    assert len(r["templates"]) == len(templates)
    scanned = [explain_template(t, entries, by_key, addr_keys, TIMEOUTS, NOW, "master")
               for t in templates]
    # both in the table's order where the keys tie (sorted is stable)
    assert sorted(r["templates"], key=lambda x: x["key"]) == sorted(scanned, key=lambda x: x["key"])
    assert any(x["synced_connections_not_linked"] for x in scanned)


def test_templates_come_in_the_order_of_client_text_service_and_real_server():
    """Sorted as text (10.0.0.10 before 10.0.0.9), then virtual address, port, real server; a
    full tie keeps the table's order."""
    def t(client, vaddr=VIP, vport=5000, daddr="10.1.0.11", expires=100):
        return ConnEntry("UDP", client, 0, vaddr, vport, daddr, 5000, "ASSURED", expires)

    entries = [
        t("fd00::9"), t("10.0.0.9"), t("10.0.0.10", vport=6000), t("10.0.0.10", vport=5000),
        t("10.0.0.10", daddr="10.1.0.9"), t("10.0.0.10", vaddr="10.0.0.99"),
        t("10.0.0.10", expires=7), t("10.0.0.100"),
    ]
    services = [svc(), svc(port=6000), Service(4, "UDP", "10.0.0.99", 5000)]
    r = explain(entries, services, TIMEOUTS, NOW)
    want = sorted(entries, key=lambda e: (e.caddr, e.vaddr, e.vport, e.daddr))
    assert [x["key"] for x in r["templates"]] == [list(template_key(e)) for e in want]
    ties = [x["expires_s"] for x in r["templates"] if x["client"] == "10.0.0.10"
            and x["service"] == f"UDP {VIP}:5000" and x["real_server"] == "10.1.0.11:5000"]
    assert ties == [100, 7]  # the table's order


def test_netmask_is_full_when_template_client_keeps_every_address():
    from lvs_hooks.kernel.model import netmask_is_full, template_client

    addrs = ["10.0.3.77", "fd00:1:2:3::77"]
    for mask in ["", "255.255.255.255", "128", "not-a-mask", "129", "255.255.255.0", "0.0.0.0",
                 "64", "0", "127"]:
        keeps = all(template_client(a, mask) == a for a in addrs)
        assert netmask_is_full(mask) == keeps, mask


def test_the_index_of_a_masked_service_serves_one_client_too():
    """explain for one client builds its index on first use (not while splitting the table):
    the same connections as the whole explanation gives that client's template."""
    s24 = svc(netmask="255.255.255.0")
    entries = [tpl(client="10.0.0.0", expires=40), conn(client="10.0.0.20", expires=290),
               conn(client="10.0.0.21", cport=40001, expires=100),
               conn(client="10.0.1.20", cport=40002), tpl(client="10.0.1.0")]
    whole = explain(entries, [s24], TIMEOUTS, NOW)
    mine = explain(entries, [s24], TIMEOUTS, NOW, client="10.0.0.21")
    assert mine["templates"] == [x for x in whole["templates"] if x["client"] == "10.0.0.0"]
    assert [c["connection"] for c in mine["templates"][0]["controls"]] == [
        "UDP 10.0.0.20:40000 -> 10.0.0.100:5000", "UDP 10.0.0.21:40001 -> 10.0.0.100:5000"]
