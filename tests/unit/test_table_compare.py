"""table.compare: the table in memory against a read of the kernel's table, template by
template; LiveTable.check over a real /proc file; `lvs-hooks table-check` through the agent."""

from test_conntable import H, kline
from test_live_table import Clock, cfg_for, datagrams, proc_table

from lvs_hooks.director.live import LiveTable
from lvs_hooks.kernel.conntable import parse_conn_table
from lvs_hooks.table.compare import compare, render


def templates(*lines):
    return parse_conn_table(H + b"".join(lines)).entries


def line(client, rs="10.1.0.11", expires=200, proto="UDP"):
    return kline(proto, client, 0, "10.0.0.100", 5000, rs, 5000, "ASSURED", expires)


def test_each_kind_of_difference_is_counted_and_shown():
    mine = templates(line("10.0.0.1"), line("10.0.0.2"), line("10.0.0.3"), line("10.0.0.4", expires=150),
                     kline("UDP", "10.0.0.1", 4000, "10.0.0.100", 5000, "10.1.0.11", 5000, "UDP", 100))
    kernel = templates(line("10.0.0.1", expires=201), line("10.0.0.2", rs="10.1.0.12"),
                       line("10.0.0.4", expires=160), line("10.0.0.5"))
    c = compare(mine, kernel, tolerance=2)
    assert (c.table, c.kernel, c.same, c.only_table, c.only_kernel, c.other_real_server,
            c.other_end, c.mismatches) == (4, 4, 1, 1, 1, 1, 1, 4)
    assert "10.0.0.3" in c.examples["only_table"][0] and "10.0.0.5" in c.examples["only_kernel"][0]
    assert "the kernel: via 10.1.0.12:5000" in c.examples["other_real_server"][0]
    text = render(c)
    assert text.startswith("table in memory 4 templates, the kernel 4: 1 the same")
    assert compare(mine, mine).mismatches == 0


def test_a_template_ending_now_on_one_side_only_is_no_difference():
    """Both sides say it ends within the tolerance; one has already let it go."""
    mine = templates(line("10.0.0.1", expires=2), line("10.0.0.3", expires=3))
    kernel = templates(line("10.0.0.2", expires=0), line("10.0.0.4", expires=3))
    c = compare(mine, kernel, tolerance=2.1)
    assert (c.ending, c.only_table, c.only_kernel, c.mismatches) == (2, 1, 1, 2)
    assert "10.0.0.1" in c.examples["ending"][0] and "10.0.0.2" in c.examples["ending"][1]
    assert "10.0.0.3" in c.examples["only_table"][0] and "10.0.0.4" in c.examples["only_kernel"][0]
    assert render(c).splitlines()[0].endswith("2 on one side only, ending within it")


def test_the_agents_table_against_the_kernels_file(tmp_path):
    proc_table(tmp_path, line("10.0.0.1", expires=300), line("10.0.0.9"))
    (tmp_path / "run").mkdir()
    clock = Clock()
    live = LiveTable(cfg_for(tmp_path), clock=clock, counts=lambda: 2)
    for d in datagrams("10.0.0.1", "10.0.0.2", timeout=300):
        live.ingest(d, "SYNC")
    r = live.check()
    assert (r["same"], r["only_table"], r["only_kernel"], r["mismatches"]) == (1, 1, 1, 2)
    assert r["ready"] is False and r["read_ms"] >= 0


def test_the_check_waits_for_an_injection_under_way(tmp_path):
    """The inject path notes what it sent once the kernel took it: a read of the kernel's table
    in the middle of it would be older than the table. The check takes the transition lock."""
    import threading

    import pytest

    from lvs_hooks.director.lock import transition_lock
    from lvs_hooks.errors import LockTimeout

    proc_table(tmp_path, line("10.0.0.1", expires=300))
    (tmp_path / "run").mkdir()
    live = LiveTable(cfg_for(tmp_path), clock=Clock(), counts=lambda: 1)
    for d in datagrams("10.0.0.1", timeout=300):
        live.ingest(d, "SYNC")
    held, done = threading.Event(), threading.Event()

    def inject_under_way():
        lock = transition_lock(str(tmp_path / "run"))
        lock.acquire(timeout=5)
        held.set()
        done.wait(timeout=30)
        lock.release()

    t = threading.Thread(target=inject_under_way)
    t.start()
    try:
        assert held.wait(timeout=30)
        with pytest.raises(LockTimeout, match="transition.lock held for more than 0.1 s"):
            live.check(lock_timeout=0.1)
    finally:
        done.set()
        t.join(timeout=30)
    assert live.check(lock_timeout=5)["mismatches"] == 0
