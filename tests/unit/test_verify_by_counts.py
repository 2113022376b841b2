"""reseed.runner's verification by the kernel's per-real-server counts, for tables too large to
read whole: the netlink session is the one seam replaced (a kernel whose counts grow as
templates arrive); the backup socket's queue is a real /proc/net/udp file with nothing queued
(`taken`: the runner's settle without a sender, nothing was sent here)."""

from lvs_hooks.kernel.netlink import DestCounts
from lvs_hooks.kernel.syncsock import SyncQueueProbe, wait_drained
from lvs_hooks.reseed.planner import PlannedTemplate
from lvs_hooks.reseed.runner import _count_key, _wait_for_counts

UDP = ("UDP", "10.0.0.100", 5000)


def tpl(caddr, daddr="10.1.0.11", fwmark=0):
    if fwmark:
        return PlannedTemplate("IP", caddr, f"0.0.0.{fwmark}", 0, daddr, 5000, fwmark, "masq", 300)
    return PlannedTemplate("UDP", caddr, "10.0.0.100", 5000, daddr, 5000, 0, "masq", 300)


class Kernel:
    """Counts per real server that grow by `arrive` per look (the templates arriving)."""

    def __init__(self, counts, arrive):
        self.counts, self.arrive, self.looks = dict(counts), dict(arrive), 0

    def dest_counts(self):
        self.looks += 1
        for k, n in self.arrive.items():
            self.counts[k] = self.counts.get(k, 0) + n
        return [DestCounts(svc, addr, port, 0, 0, n) for (svc, addr, port), n in self.counts.items()]


def taken(tmp_path):
    (tmp_path / "net").mkdir(exist_ok=True)
    (tmp_path / "net" / "udp").write_text(
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode ref pointer drops\n"
    )
    q = SyncQueueProbe(str(tmp_path), 8848)
    return lambda timeout: wait_drained(q, timeout)


def test_the_count_key_is_the_services_and_the_real_servers():
    assert _count_key(tpl("10.0.0.1")) == (UDP, "10.1.0.11", 5000)
    assert _count_key(tpl("10.0.0.1", fwmark=3)) == (("fwmark", 4, 3), "10.1.0.11", 5000)


def test_every_real_server_grew_by_what_was_sent_to_it(tmp_path):
    a, b = (UDP, "10.1.0.11", 5000), (UDP, "10.1.0.12", 5000)
    sent = [tpl("10.0.0.1"), tpl("10.0.0.2"), tpl("10.0.0.3", daddr="10.1.0.12")]
    kernel = Kernel({a: 10, b: 4}, {a: 1, b: 1})  # one more each per look
    before = {a: 10, b: 4}
    assert _wait_for_counts(sent, before, kernel, taken(tmp_path), 5.0, lambda: 0.0) == []
    assert kernel.looks == 2  # a needed two arrivals: one look was not enough


def test_a_real_server_that_fell_short_names_its_templates(tmp_path):
    a, b = (UDP, "10.1.0.11", 5000), (UDP, "10.1.0.12", 5000)
    sent = [tpl("10.0.0.1"), tpl("10.0.0.3", daddr="10.1.0.12")]
    t = [0.0]

    def clock():
        t[0] += 1.0
        return t[0]

    kernel = Kernel({a: 10, b: 4}, {a: 1})  # nothing ever arrives at b
    missing = _wait_for_counts(sent, {a: 10, b: 4}, kernel, taken(tmp_path), 3.0, clock)
    assert missing == [sent[1]]
