"""The README's keepalived snippets against the packaged wrapper (netns tier: root; ~25 s).

`keepalived -t` only checks the syntax: keepalived 2.2 vets a script's path (every component
root-owned and not writable by others, with enable_script_security) when it starts, and logs
"Unsafe permissions found for script ... - disabling" to syslog, never to the config test. So
each snippet is checked twice: `keepalived -t`, then a real keepalived started with it for a few
seconds, in its own network, mount and PID namespaces: the RPM's payload overlaid on /usr, /etc
and /var/lib (writes go to scratch directories), a tmpfs on /run, a veth named eth0. It must log
no security complaint, and the packaged lvs-hooks it starts must journal keepalived's events
(the host kernel has no IPVS: the steps fail, the events are there). A control run with the
wrapper made world-writable must be refused by keepalived.
"""

import json
import os
import re
import shutil
import stat

import pytest
from rpmtest import PROJECT, missing, ns_run

pytestmark = pytest.mark.netns

SECURITY = re.compile(r"unsafe permissions|disabling|security violation|cannot be accessed|"
                      r"not executable|could not find script|cannot find script", re.I)


def readme_snippets() -> dict:
    """The keepalived.conf blocks of the README's quick start ("The keepalived lines"), by
    form."""
    with open(os.path.join(PROJECT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    m = re.search(r"^### \d+\. The keepalived lines\n(.*?)(?=^##|\Z)", text, re.M | re.S)
    assert m, "README.md has no 'The keepalived lines' section in its quick start"
    blocks = [b for b in re.findall(r"^```[a-z]*\n(.*?)^```", m.group(1), re.M | re.S)
              if "global_defs" in b]
    forms = {("fifo" if "vrrp_notify_fifo_script" in b else "notify"): b for b in blocks}
    assert sorted(forms) == ["fifo", "notify"] and len(blocks) == 2, blocks
    return forms


def runnable_here(conf: str) -> str:
    """The snippet as keepalived can run it on this host: keepalived's VRRP process needs IPVS
    for `lvs_sync_daemon` (without it: "IPVS: Can't initialize ipvs", the process dies and is
    respawned), which the build machines' kernel lacks; there the line is left out. keepalived
    -t checks the whole snippet (test_keepalived_snippets.py) and the lab runs it whole."""
    if os.path.exists("/proc/net/ip_vs"):
        return conf
    return "\n".join(ln for ln in conf.splitlines()
                     if not ln.strip().startswith("lvs_sync_daemon")) + "\n"


def _keepalived():
    if not shutil.which("keepalived"):
        missing("needs keepalived")
    return shutil.which("keepalived")


def run_keepalived(rpm_root: str, layers: list, conf: str, work, want_events: int,
                   seconds: float):
    """keepalived -t, then keepalived for up to `seconds` (until lvs-hooks journaled
    `want_events` events). Returns (config test rc, config test output, keepalived log,
    journal events)."""
    kd = _keepalived()
    conf_path = work / "keepalived.conf"
    conf_path.write_text(conf)
    log = work / "keepalived.log"
    test_out = work / "config-test.out"
    overlays = {
        "/usr": [*layers, os.path.join(rpm_root, "usr")],
        "/etc": [os.path.join(rpm_root, "etc")],
        "/var/lib": [os.path.join(rpm_root, "var", "lib")],
    }
    upper = {"/etc": str(work / "etc"), "/var/lib": str(work / "varlib")}
    tenths = int(seconds * 10)
    setup = f"""
mkdir -m 0700 /run/lvs-hooks
ip link set lo up
ip link add eth0 type veth peer name eth0p
ip addr add 10.99.0.1/24 dev eth0
ip link set eth0 up
ip link set eth0p up
set +e
{kd} -t -f {conf_path} > {test_out} 2>&1
echo $? >> {test_out}
{kd} -n -l -D -f {conf_path} --vrrp -p /run/keepalived.pid -r /run/vrrp.pid > {log} 2>&1 &
k=$!
i=0
while [ $i -lt {tenths} ]; do
    n=$(cat /var/lib/lvs-hooks/events.jsonl 2>/dev/null | wc -l)
    [ "$n" -ge {want_events} ] && break
    sleep 0.1
    i=$((i + 1))
done
kill -TERM $k
wait $k
sleep 0.3
"""
    r = ns_run(overlays, ["true"], tmpfs=["/run"], upper=upper, net=True, setup=setup,
               timeout=seconds + 30)
    assert r.returncode == 0, r.stderr
    out = test_out.read_text().strip().splitlines()
    journal = work / "varlib" / "lvs-hooks" / "events.jsonl"
    events = ([json.loads(ln) for ln in journal.read_text().splitlines()]
              if journal.exists() else [])
    return int(out[-1]), "\n".join(out[:-1]), log.read_text(), events


@pytest.mark.parametrize("form", ["fifo", "notify"])
def test_readme_snippet_with_packaged_paths(form, rpm_root, can_unshare, tmp_path):
    conf = readme_snippets()[form]
    assert "/usr/libexec/keepalived/lvs-hooks" in conf and "enable_script_security" in conf
    rc, test_out, log, events = run_keepalived(rpm_root, [], runnable_here(conf), tmp_path, 2,
                                               15)
    assert rc == 0 and test_out == "", f"keepalived -t: rc {rc}\n{test_out}"
    assert "Startup complete" in log or "Starting VRRP child" in log, log
    complaints = [ln for ln in log.splitlines() if SECURITY.search(ln)]
    assert not complaints, "\n".join(complaints)
    # the packaged lvs-hooks ran, started by keepalived, and journaled its events
    assert len(events) >= 2, log
    assert {e["event"]["source"] for e in events} == {form}, events
    states = [e["event"]["state"] for e in events]
    assert "BACKUP" in states or "FAULT" in states, states
    print(f"{form}: keepalived -t rc 0; lvs-hooks journaled {states}")


def test_keepalived_refuses_a_world_writable_wrapper(rpm_root, can_unshare, tmp_path):
    """Control: the same run with the wrapper 0777 is refused, so the check above is real."""
    layer = tmp_path / "unsafe"
    (layer / "usr" / "libexec" / "keepalived").mkdir(parents=True)
    w = layer / "usr" / "libexec" / "keepalived" / "lvs-hooks"
    shutil.copy(os.path.join(rpm_root, "usr/libexec/keepalived/lvs-hooks"), w)
    os.chmod(w, 0o777)
    assert stat.S_IMODE(os.stat(w).st_mode) == 0o777
    work = tmp_path / "run"
    work.mkdir()
    rc, _out, log, events = run_keepalived(rpm_root, [str(layer / "usr")],
                                           runnable_here(readme_snippets()["notify"]), work,
                                           1, 5)
    assert rc == 0  # the config test does not see it
    assert "Unsafe permissions found for script '/usr/libexec/keepalived/lvs-hooks" in log, log
    assert events == []


def test_packaged_warmup_example(rpm_root, can_unshare, tmp_path):
    """The warm-up gate's example as packaged (/usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf):
    keepalived accepts it, reads its track file in /run/lvs-hooks (the tmpfiles.d directory;
    keepalived ignores a track file whose directory is missing) and, with `init_file 1
    overwrite`, starts cold: priority 150 lowered by the weight 60 to 90. Alone on its network
    it still becomes MASTER, as the example says."""
    with open(os.path.join(rpm_root, "usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf"),
              encoding="utf-8") as fh:
        conf = fh.read()
    assert 'file "/run/lvs-hooks/warmup.track"' in conf
    # no notify in the example: nothing to journal, run until MASTER (3 adverts of 1 s + skew)
    rc, test_out, log, events = run_keepalived(rpm_root, [], conf, tmp_path, 1, 6)
    assert rc == 0 and test_out == "", f"keepalived -t: rc {rc}\n{test_out}"
    assert "(VI_LVS) Changing effective priority from 150 to 90" in log, log
    assert "not accessible" not in log and "ignoring" not in log.lower(), log
    assert "(VI_LVS) Entering MASTER STATE" in log, log
    assert events == []
