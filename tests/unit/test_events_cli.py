"""The keepalived entry points and `history` through the real CLI (no kernel needed)."""

import json

import pytest
from click.testing import CliRunner

from lvs_hooks.cli import cli


@pytest.fixture
def env(tmp_path):
    vs = tmp_path / "proc" / "sys" / "net" / "ipv4" / "vs"
    vs.mkdir(parents=True)
    (vs / "sloppy_tcp").write_text("0\n")
    cfg = tmp_path / "lvs-hooks.yaml"
    cfg.write_text(
        f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
        f"  proc_root: {tmp_path / 'proc'}\n"
    )
    return tmp_path, cfg


def run(cfg, *args):
    return CliRunner().invoke(cli, ["--config", str(cfg), *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["notify", "INSTANCE", "VI_1", "MASTER"], "expected the 4 arguments"),
        (["notify", "INSTANCE", "VI_1", "{UNKNOWN}", "100"], "got '{UNKNOWN}'"),
        (["notify", "VRRP", "VI_1", "MASTER", "100"], "INSTANCE or GROUP"),
        (["notify", "INSTANCE", "VI_1", "MASTER", "-5"], "0-255, got -5"),
        (["master", "INSTANCE", "VI_1", "MASTER", "100"], "use `lvs-hooks notify` there"),
        (["backup", "a", "b"], "takes at most one argument"),
        (["fifo"], "expected one argument, the FIFO path"),
        (["fifo", "/a", "/b"], "got 2: /a /b"),
    ],
)
def test_wrong_keepalived_arguments_are_one_line_and_change_nothing(env, args, message):
    tmp, cfg = env
    result = run(cfg, *args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not (tmp / "run").exists() and not (tmp / "state").exists()
    assert (tmp / "proc/sys/net/ipv4/vs/sloppy_tcp").read_text() == "0\n"


def test_fifo_that_is_not_a_fifo(env):
    tmp, cfg = env
    (tmp / "plain").write_text("")
    result = run(cfg, "fifo", str(tmp / "plain"))
    assert result.exit_code == 2
    assert "is not a FIFO" in result.output


def test_master_transition_runs_and_failed_steps_mean_exit_6(env):
    tmp, cfg = env
    result = run(cfg, "notify", "INSTANCE", "VI_1", "MASTER", "150")
    # sysctls is set from the fake /proc; with no snapshot yet the reseed takes the kernel's
    # table as its source, and this host has no IPVS.
    assert result.exit_code == 6, result.output
    assert "failed steps: reseed" in result.output
    assert (tmp / "proc/sys/net/ipv4/vs/sloppy_tcp").read_text() == "1\n"
    history = run(cfg, "history", "--json")
    assert history.exit_code == 0
    (record,) = json.loads(history.output)
    assert record["event"]["state"] == "MASTER" and record["outcome"] == "failed"
    assert [(s["step"], s["ok"]) for s in record["steps"]] == [
        ("firewall", True),
        ("sysctls", True),
        ("timeouts", True),
        ("reseed", False),
    ]
    assert "IPVS is not available" in record["steps"][3]["error"]


def test_history_lists_and_limits(env):
    tmp, cfg = env
    assert run(cfg, "history").output.strip() == "no transitions recorded"
    for name in ("VI_1", "VI_2", "VI_3"):
        assert run(cfg, "notify", "INSTANCE", name, "DELETED", "100").exit_code == 0
    assert run(cfg, "master", "--group", "VG").exit_code == 6  # no IPVS on this host
    text = run(cfg, "history", "-n", "2").output
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["TIME", "EVENT", "OUTCOME"]
    assert "DELETED instance VI_3" in lines[1] and "nothing to do" in lines[1]
    assert "MASTER group VG" in lines[2] and "reseed FAILED" in lines[2]
    assert lines[3].strip().startswith("reseed: IPVS is not available")
    assert len(json.loads(run(cfg, "history", "--json", "-n", "0").output)) == 4


def test_unwatched_instance_is_ignored_exit_0(env):
    tmp, cfg = env
    cfg.write_text(cfg.read_text() + "transitions:\n  instances: [VI_LVS]\n")
    result = run(cfg, "notify", "INSTANCE", "VI_OTHER", "MASTER", "100")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(run(cfg, "history", "--json").output)
    assert record["outcome"] == "ignored"
    assert (tmp / "proc/sys/net/ipv4/vs/sloppy_tcp").read_text() == "0\n"


def test_history_skips_and_counts_records_of_the_wrong_shape(env, caplog):
    tmp, cfg = env
    assert run(cfg, "notify", "INSTANCE", "VI_1", "DELETED", "100").exit_code == 0
    journal = tmp / "state" / "events.jsonl"
    with open(journal, "a") as f:
        for bad in ('{"event": 5}', '{"steps": "x"}', '{"steps": [1]}', '{"ms": "slow"}',
                    '{"event": {"kind": 7}}', '{"at": 1e999}', '{"newer": []}', '[1]', "x",
                    '{"steps": [{"step": "s", "figures": {"latency_ms": "x"}}]}',
                    "[" * 100000):
            f.write(bad + "\n")
    assert run(cfg, "notify", "INSTANCE", "VI_2", "DELETED", "100").exit_code == 0
    r = run(cfg, "history")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 3 and "VI_1" in lines[1] and "VI_2" in lines[2]
    assert "11 lines are not records: skipped" in caplog.text


def test_history_of_a_journal_that_is_a_directory_is_one_line(env):
    tmp, cfg = env
    (tmp / "state" / "events.jsonl").mkdir(parents=True)
    r = run(cfg, "history")
    assert r.exit_code == 1
    assert r.output.splitlines() == [
        f"Error: journal {tmp / 'state' / 'events.jsonl'}: cannot read: is a directory, "
        "not a regular file"
    ]


@pytest.mark.parametrize(
    "args, described",
    [
        (["notify", "INSTANCE", "--help", "DELETED", "100"], "DELETED instance --help"),
        (["notify", "GROUP", "-h", "DELETED", "0"], "DELETED group -h"),
        (["stop", "--group", "--help"], "STOP group --help"),
    ],
)
def test_an_instance_named_like_an_option_is_an_instance(env, args, described):
    tmp, cfg = env
    r = run(cfg, *args)
    assert "Usage:" not in r.output
    records = json.loads(run(cfg, "history", "--json").output)
    ev = records[-1]["event"]
    assert f"{ev['state']} {ev['kind'].lower()} {ev['name']}" == described


def test_help_first_is_still_help(env):
    tmp, cfg = env
    for args in (["notify", "--help"], ["master", "--help"]):
        r = run(cfg, *args)
        assert r.exit_code == 0 and "Usage:" in r.output
    assert not (tmp / "state").exists()
