"""The `lvs-hooks` command line: thin click commands over the pure cores.

Every option shared by several commands is defined once here. Commands that report take --json.
"""

import importlib
import json
import logging
import os
import sys
from collections import abc
from typing import Any, Callable, Iterable, List, Optional

import click

from lvs_hooks import __version__
from lvs_hooks.errors import LvsHooksError
from lvs_hooks.logsetup import SYSLOG_ONLY

DEFAULT_CONFIG = "/etc/lvs-hooks/lvs-hooks.yaml"

log = logging.getLogger(__name__)


class AppContext:
    """What every command gets: the parsed config (loaded lazily) and the global flags."""

    def __init__(self, config_path: str, config_explicit: bool, debug: bool):
        self.config_path = config_path
        self.config_explicit = config_explicit
        self.debug = debug
        self._config = None
        self._trusted = False

    @property
    def config(self):
        """The config, once every path it makes root trust has been checked (UntrustedPath)."""
        if self._trusted:
            return self._config
        from lvs_hooks import trust
        from lvs_hooks.errors import UntrustedPath

        config_file = self._existing_config()
        try:
            # The file first: what an untrusted file says is not worth parsing.
            if config_file is not None:
                trust.check_path(config_file, "config file")
            cfg = self.unchecked_config
            for path, what in trust.config_paths(None, cfg):
                trust.check_path(path, what)
        except trust.Untrusted as e:
            raise UntrustedPath(e.message) from None
        self._trusted = True
        return cfg

    @property
    def unchecked_config(self):
        """The config without the trust check: for doctor, which reports what it would refuse."""
        if self._config is None:
            # deferred: --help and --version need no YAML parser
            from lvs_hooks.config import load_config

            self._config = load_config(self.config_path, required=self.config_explicit)
        return self._config

    def _existing_config(self) -> Optional[str]:
        # An absent default config means built-in defaults: no file to trust.
        return self.config_path if os.path.lexists(self.config_path) else None


pass_app = click.make_pass_decorator(AppContext)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(f)


def _jsonable(o: Any) -> Any:
    """What json does not write itself: a sequence a report makes as it is read (explain's
    connections) as a list, anything else (a path, a time) as its text."""
    if isinstance(o, abc.Sequence) and not isinstance(o, (bytes, bytearray)):
        return list(o)
    return str(o)


def emit(report: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """Print a report as JSON or through its human renderer."""
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True, default=_jsonable))
    else:
        click.echo(render(report))


def emit_lines(report: Any, as_json: bool, lines: Callable[[Any], Iterable[str]]) -> None:
    """emit() for a report whose text can be a million lines: written a line at a time as it
    is made, through stdout's buffer, never held whole."""
    if as_json:
        emit(report, True, lambda r: "")
        return
    out = sys.stdout
    for line in lines(report):
        out.write(line)
        out.write("\n")
    out.flush()


class OperatorError(click.ClickException):
    """An LvsHooksError as click shows it: `Error: <message>` on stderr, then the error's own
    exit code (the core layers do not depend on click, so the CLI translates)."""

    def __init__(self, error: LvsHooksError):
        super().__init__(error.format_message())
        self.exit_code = error.exit_code


# The module of lvs_hooks/commands that registers each subcommand. A command line imports the
# one module it runs, not all six: `rules show` loads 226 modules instead of 342 (measured; a
# keepalived hook needs nearly all of them anyway). Every module is a second or more of start-up
# in the lab's emulated guest. `--help` imports them all.
# tests/unit/test_cli_commands.py holds this table to what the modules register.
COMMAND_MODULES = {
    "agent": "agent", "push": "agent", "handover": "agent",
    "explain": "diagnose", "doctor": "diagnose", "init": "diagnose",
    "notify": "notify", "master": "notify", "backup": "notify", "fault": "notify",
    "stop": "notify", "fifo": "notify", "history": "notify",
    "ready": "ready",
    "rules": "rules",
    "snapshot": "templates", "reseed": "templates", "status": "templates",
    "table-check": "templates",
}


class _Group(click.Group):
    """Loads a subcommand's module when it is asked for (COMMAND_MODULES); turns
    operator-actionable errors into one line (traceback only with --debug)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMAND_MODULES))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        module = COMMAND_MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"lvs_hooks.commands.{module}")  # registers it on `cli`
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LvsHooksError as e:
            app = ctx.find_object(AppContext)
            if app is not None and app.debug:
                import traceback  # only with --debug

                traceback.print_exc()
            log.error("%s", e.format_message(), extra=SYSLOG_ONLY)
            raise OperatorError(e) from e


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help=f"Configuration file (default {DEFAULT_CONFIG}; built-in defaults if it is absent).",
)
@click.option("--debug", is_flag=True, help="Log debug lines and show tracebacks.")
@click.version_option(__version__, prog_name="lvs-hooks")
@click.pass_context
def cli(ctx: click.Context, config_path: Optional[str], debug: bool) -> None:
    """keepalived hooks that keep IPVS persistence templates across director failover."""
    from lvs_hooks.logsetup import setup_logging  # deferred: --help and --version log nothing

    setup_logging(debug)
    ctx.obj = AppContext(config_path or DEFAULT_CONFIG, config_path is not None, debug)


def command(*args, **kwargs):
    """Register a subcommand on the main group (modules call this at import)."""
    return cli.command(*args, **kwargs)


def main(argv: Optional[list] = None) -> None:
    cli.main(args=argv, prog_name="lvs-hooks")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
