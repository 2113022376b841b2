"""The core commands through the real CLI, up to the kernel seam (no IPVS on this host)."""

import json

from click.testing import CliRunner

from lvs_hooks.cli import cli
from lvs_hooks.kernel.model import ConnEntry, Destination, Service
from lvs_hooks.snapshot import Snapshot, SnapshotStore

SVC = Service(4, "UDP", "10.0.0.100", 5000, persistent=True, timeout=360,
              destinations=(Destination("10.1.0.11", 5000),))


def config(tmp_path, extra=""):
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
                    f"  proc_root: {tmp_path / 'proc'}\n{extra}")
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_snapshot_list_shows_generations_and_refused_ones(tmp_path):
    cfg = config(tmp_path)
    store = SnapshotStore(tmp_path / "state", keep=5)
    tpl = ConnEntry("UDP", "10.0.0.20", 0, "10.0.0.100", 5000, "10.1.0.11", 5000, "ASSURED", 300)
    store.save(Snapshot.capture([SVC], [tpl], captured_at=1_700_000_000.0))
    newest = store.save(Snapshot.capture([SVC], [tpl, tpl], captured_at=1_700_000_100.0))
    newest.write_bytes(newest.read_bytes()[:-20])  # truncated
    r = run("--config", cfg, "snapshot", "--list", "--json")
    assert r.exit_code == 0, r.output
    gens = json.loads(r.output)
    assert [(g["templates"], g["ok"]) for g in gens] == [(2, False), (1, True)]
    human = run("--config", cfg, "snapshot", "--list")
    assert "REFUSED" in human.output and human.output.count("\n") == 3


def test_reseed_from_corrupt_snapshot_is_one_line_and_exit_3(tmp_path):
    cfg = config(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}\n{}\n')
    r = run("--config", cfg, "reseed", "--from", str(bad), "--dry-run")
    assert r.exit_code == 3
    assert r.output.count("\n") == 1 and str(bad) in r.output


def test_reseed_latest_without_snapshots(tmp_path):
    r = run("--config", config(tmp_path), "reseed", "--latest")
    assert r.exit_code == 3 and "no usable snapshot" in r.output


def test_bad_config_key_names_the_key(tmp_path):
    r = run("--config", config(tmp_path, "sync:\n  sycnid: 3\n"), "status")
    assert r.exit_code == 2
    assert "sync.sycnid" in r.output and "syncid" in r.output
    assert r.output.count("\n") == 1


def test_missing_explicit_config_is_an_error(tmp_path):
    r = run("--config", str(tmp_path / "nope.yaml"), "status")
    assert r.exit_code == 2 and "nope.yaml" in r.output


def test_from_and_latest_exclude_each_other(tmp_path):
    r = run("--config", config(tmp_path), "reseed", "--from", "x", "--latest")
    assert r.exit_code == 2 and "exclude" in r.output


def test_snapshot_without_ipvs_is_a_clear_error(tmp_path):
    r = run("--config", config(tmp_path), "snapshot")
    assert r.exit_code == 4
    assert r.output.count("\n") == 1 and "IPVS" in r.output
