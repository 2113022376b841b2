"""Operator errors: plain exceptions in the core, `Error: <message>` and their exit code at the CLI."""

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from lvs_hooks import errors
from lvs_hooks.cli import cli

# Operators and keepalived scripts branch on these numbers: they must not move.
EXIT_CODES = {
    errors.LvsHooksError: 1,
    errors.ConfigError: 2,
    errors.SnapshotError: 3,
    errors.KernelError: 4,
    errors.SyncDaemonError: 4,
    errors.ReadAbandoned: 4,
    errors.ReseedIncomplete: 5,
    errors.UsageError: 2,
    errors.TransitionIncomplete: 6,
    errors.LockTimeout: 7,
    errors.FirewallError: 8,
    errors.PeerMacUnknown: 8,
    errors.RulesDrift: 9,
    errors.KeepalivedConfError: 2,
    errors.ControlError: 2,
    errors.HandoverFailed: 10,
    errors.UntrustedPath: 11,
    errors.AgentError: 12,
}


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch):
    # The CLI configures the root logger once per process; a test's --debug must not leave
    # DEBUG level and a handler on a dead CliRunner stream behind for the tests after it.
    monkeypatch.setattr("lvs_hooks.logsetup.setup_logging", lambda debug=False: None)


@pytest.fixture
def raising_command():
    """A throwaway subcommand on the real group that raises the error it is given."""
    to_raise = []

    @cli.command("raise-for-test", hidden=True)
    def _raise():
        raise to_raise[0]

    yield to_raise
    cli.commands.pop("raise-for-test")


def config(tmp_path, extra=""):
    path = tmp_path / "lvs-hooks.yaml"
    path.write_text(f"paths:\n  state_dir: {tmp_path / 'state'}\n  run_dir: {tmp_path / 'run'}\n"
                    f"  proc_root: {tmp_path / 'proc'}\n{extra}")
    return str(path)


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_every_error_class_is_listed():
    defined = {c for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, errors.LvsHooksError)}
    assert defined == set(EXIT_CODES)


@pytest.mark.parametrize("cls", list(EXIT_CODES), ids=lambda c: c.__name__)
def test_error_is_plain_exception_with_exit_code_and_message(cls):
    e = cls("something went wrong: fix it")
    assert not isinstance(e, click.ClickException)
    assert cls.exit_code == e.exit_code == EXIT_CODES[cls]
    assert e.format_message() == str(e) == e.message == "something went wrong: fix it"


@pytest.mark.parametrize("cls", list(EXIT_CODES), ids=lambda c: c.__name__)
def test_cli_prints_one_line_and_exits_with_the_error_code(raising_command, cls):
    raising_command.append(cls("peer 10.0.0.2 did not answer"))
    r = run("raise-for-test")
    assert r.exit_code == EXIT_CODES[cls]
    assert r.output == "Error: peer 10.0.0.2 did not answer\n"


def test_cli_debug_adds_the_traceback(raising_command):
    raising_command.append(errors.KernelError("IPVS is not available"))
    r = run("--debug", "raise-for-test")
    assert r.exit_code == 4
    assert "Traceback (most recent call last)" in r.output
    assert "lvs_hooks.errors.KernelError: IPVS is not available" in r.output
    assert r.output.endswith("\nError: IPVS is not available\n")


def test_cli_without_debug_has_no_traceback(raising_command):
    raising_command.append(errors.KernelError("IPVS is not available"))
    assert "Traceback" not in run("raise-for-test").output


def test_bugs_are_not_turned_into_one_line(raising_command):
    raising_command.append(KeyError("bug"))
    r = run("raise-for-test")
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)


# The same codes from real commands, up to the kernel seam (no IPVS on this host).


def test_missing_explicit_config_exits_2(tmp_path):
    r = run("--config", str(tmp_path / "nope.yaml"), "status")
    assert r.exit_code == 2
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert "nope.yaml" in r.output


def test_no_usable_snapshot_exits_3(tmp_path):
    r = run("--config", config(tmp_path), "reseed", "--latest")
    assert r.exit_code == 3
    assert r.output.startswith("Error: ") and "no usable snapshot" in r.output


def test_no_ipvs_exits_4(tmp_path):
    r = run("--config", config(tmp_path), "snapshot")
    assert r.exit_code == 4
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1 and "IPVS" in r.output


def test_bad_config_key_exits_2(tmp_path):
    r = run("--config", config(tmp_path, "sync:\n  sycnid: 3\n"), "status")
    assert r.exit_code == 2
    assert r.output.startswith("Error: ") and "sync.sycnid" in r.output


@pytest.mark.parametrize("module", [
    "lvs_hooks.errors",
    "lvs_hooks.kernel.netlink",
    "lvs_hooks.rules.manager",
    "lvs_hooks.control.channel",
])
def test_core_does_not_import_click(module):
    # A fresh interpreter: this one has click loaded by the CLI tests already.
    code = f"import {module}, sys; assert 'click' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
