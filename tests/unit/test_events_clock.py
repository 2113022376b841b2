"""Ordering events by when keepalived forked their process."""

import os

from lvs_hooks.events import clock


def fake_proc(root, procs):
    """procs: pid -> (comm, ppid, starttime ticks)."""
    for pid, (comm, ppid, start) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        # Fields 3..22 after the comm: state, ppid, then 16 fields, starttime is the 20th.
        rest = ["S", str(ppid)] + ["0"] * 17 + [str(start)] + ["0"] * 30
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(rest)}\n")
    return str(root)


TICK = clock._TICK_NS


def test_forked_by_keepalived_directly(tmp_path):
    root = fake_proc(tmp_path, {300: ("lvs-hooks", 20, 1000), 20: ("keepalived", 10, 5)})
    assert clock.notify_order(300, root) == (1000 * TICK, 300, 0)


def test_wrapper_script_between_keepalived_and_us(tmp_path):
    # keepalived forked the shell at tick 990; the shell started us later. The fork that
    # carries keepalived's order is the shell's.
    root = fake_proc(
        tmp_path,
        {
            300: ("python3", 299, 1003),
            299: ("notify.sh (x)", 20, 990),
            20: ("keepalived", 10, 5),
        },
    )
    assert clock.notify_order(300, root) == (990 * TICK, 299, 0)


def test_no_keepalived_ancestor_uses_own_start(tmp_path):
    root = fake_proc(
        tmp_path,
        {300: ("lvs-hooks", 200, 1000), 200: ("bash", 100, 10), 100: ("sshd", 1, 1)},
    )
    assert clock.notify_order(300, root) == (1000 * TICK, 300, 0)


def test_gone_process_falls_back_to_now(tmp_path):
    before = clock.now_ns()
    t, pid, seq = clock.notify_order(424242, str(tmp_path))
    assert t >= before and pid == 424242 and seq == 0


def test_real_process_order_is_its_fork_time():
    t, pid, _ = clock.notify_order()
    assert pid == os.getpid()
    assert 0 < t <= clock.now_ns()


def test_fifo_order_increases():
    a = clock.fifo_order(1)
    b = clock.fifo_order(2)
    assert a < b and a[1] == os.getpid()
