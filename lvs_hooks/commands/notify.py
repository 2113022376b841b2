"""keepalived's entry points: `notify`, `master|backup|fault|stop`, `fifo`; and `history`.

keepalived drops a script's stdout and stderr: everything worth knowing goes to the log
(syslog/journal), and the exit code says how it went:

    0  the transition ran, or the event was skipped by rule (stale, superseded, not watched)
    2  keepalived's arguments or the config are wrong: nothing was done
    6  the transition ran but some steps failed (the log and `lvs-hooks history` name them)
    7  the transition before it held the lock too long: nothing was done
"""

import logging
import os
import signal
from contextlib import contextmanager
from typing import Iterator, List, Tuple

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.director import Director
from lvs_hooks.door import SOCKET_NAME
from lvs_hooks.errors import LvsHooksError, TransitionIncomplete, UsageError
from lvs_hooks.events.clock import notify_order
from lvs_hooks.events.fifo import FifoReader, serve
from lvs_hooks.events.handoff import AgentHandoff
from lvs_hooks.events.journal import Journal, render_history, well_formed
from lvs_hooks.events.keepalived import (
    ROLE_COMMANDS,
    ArgumentError,
    Event,
    parse_notify_args,
    role_event,
)
from lvs_hooks.events.parts import ReportingSequencer, director_parts
from lvs_hooks.events.sequencer import Sequencer
from lvs_hooks.events.transitions import lock_timeout_for, make_planner

log = logging.getLogger(__name__)


def _journal(app: AppContext) -> Journal:
    cfg = app.config
    return Journal(cfg.paths.state_dir, cfg.transitions.journal_keep)


def _sequencer(app: AppContext) -> Sequencer:
    return ReportingSequencer(app.config, _journal(app))


@contextmanager
def _finish_on_sigterm(event: Event) -> Iterator[None]:
    """Let a transition under way finish when SIGTERM comes.

    keepalived has the kernel send its scripts SIGTERM when it dies; the director still holds
    the VIPs then, and a reseed cut short would leave it master with half its templates.
    """

    def on_sigterm(signum, frame):
        log.warning("%s: SIGTERM received; finishing the transition under way", event.describe())

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def dispatch(app: AppContext, event: Event) -> None:
    """Run the transition for one event from keepalived's notify forms."""
    cfg = app.config  # a config error stops here, before anything is touched
    log.info("%s: from keepalived (%s)", event.describe(), event.source)
    with _finish_on_sigterm(event):
        outcome = _sequencer(app).handle(
            event, make_planner(Director(cfg)), lock_timeout_for(event, cfg.transitions)
        )
    if outcome.failed:
        failed = [s["step"] for s in outcome.record["steps"] if not s["ok"]]
        if outcome.record.get("journal_error"):
            failed.append("journal")
        raise TransitionIncomplete(f"{event.describe()}: failed steps: {', '.join(failed)}")


class KeepalivedArgs(click.Command):
    """keepalived's arguments are data, not options: an instance named `--help` is an instance
    (click would print the help and exit 0, and the event would be lost). Only `--help` as the
    first argument asks for help, as a person typing it means; `--group` stays the role
    commands' flag wherever it is."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        if args and args[0] != "--help":
            flags = [a for a in args if a == "--group" and self.name != "notify"]
            rest = [a for a in args if a != "--group" or self.name == "notify"]
            args = flags + ["--"] + rest
        return super().parse_args(ctx, args)


@command(
    "notify",
    cls=KeepalivedArgs,
    context_settings={"ignore_unknown_options": True},
    short_help="keepalived's generic notify script.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@pass_app
def notify_cmd(app: AppContext, args: Tuple[str, ...]) -> None:
    """keepalived's generic `notify` script: keepalived appends INSTANCE|GROUP NAME STATE
    PRIORITY. In keepalived.conf: notify "/usr/libexec/keepalived/lvs-hooks notify"."""
    order = notify_order()
    try:
        event = parse_notify_args(args, order)
    except ArgumentError as e:
        raise UsageError(f"notify: {e}") from None
    dispatch(app, event)


def _role_command(name: str, state: str) -> None:
    @command(
        name,
        cls=KeepalivedArgs,
        context_settings={"ignore_unknown_options": True},
        short_help=f"keepalived's notify_{name} script.",
        help=f"keepalived's notify_{name} script (keepalived passes no arguments): the "
        f"{state} transition. NAME is the instance (or with --group the sync group) the script "
        f"is set on. In keepalived.conf: "
        f'notify_{name} "/usr/libexec/keepalived/lvs-hooks {name} VI_1".',
    )
    @click.option("--group", is_flag=True, help="NAME is a vrrp_sync_group.")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[NAME]")
    @pass_app
    def role_cmd(app: AppContext, group: bool, args: Tuple[str, ...]) -> None:
        order = notify_order()
        if len(args) > 1:
            hint = (
                " (keepalived's generic notify appends 4 arguments: use `lvs-hooks notify` there)"
                if len(args) == 4 or len(args) == 5
                else ""
            )
            raise UsageError(
                f"{name}: takes at most one argument, the instance or group name; got "
                f"{len(args)}: {' '.join(args)}{hint}"
            )
        try:
            event = role_event(name, args[0] if args else None, group, order)
        except ArgumentError as e:
            raise UsageError(f"{name}: {e}") from None
        dispatch(app, event)


for _name, _state in ROLE_COMMANDS.items():
    _role_command(_name, _state)


@command("fifo", short_help="Read keepalived's notify FIFO until SIGTERM.")
@click.argument("args", nargs=-1, metavar="FIFO_PATH")
@pass_app
def fifo_cmd(app: AppContext, args: Tuple[str, ...]) -> None:
    """keepalived's vrrp_notify_fifo_script: read events from the FIFO (keepalived passes its
    path last) and run their transitions in order until SIGTERM, then drain what is queued.

    In keepalived.conf (global_defs): vrrp_notify_fifo /run/keepalived/vrrp.fifo and
    vrrp_notify_fifo_script "/usr/libexec/keepalived/lvs-hooks fifo"."""
    if len(args) != 1:
        raise UsageError(
            f"fifo: expected one argument, the FIFO path keepalived appends; got {len(args)}"
            + (f": {' '.join(args)}" if args else "")
        )
    parts = director_parts(app.config)
    reader = FifoReader(
        args[0],
        parts.sequencer,
        parts.planner,
        parts.lock_timeout,
        duty=parts.duty,
        duty_period=parts.period,
        handoff=AgentHandoff(
            os.path.join(app.config.paths.run_dir, SOCKET_NAME), os.path.abspath(app.config_path)
        ),
    )
    serve(reader)


@command("history")
@click.option(
    "-n", "--last", default=20, show_default=True, help="Show this many records (0: all)."
)
@json_option
@pass_app
def history_cmd(app: AppContext, last: int, as_json: bool) -> None:
    """The journal of transitions: each event, what was done and how each step went."""
    journal = _journal(app)
    try:
        records, bad = journal.read()
    except OSError as e:
        raise LvsHooksError(f"journal {journal.path}: cannot read: {e.strerror or e}") from None
    shown = [r for r in records if well_formed(r)]
    bad += len(records) - len(shown)
    records = shown
    if bad:
        # counted, never shown: a line that is not a record may hold anything
        log.warning("journal %s: %d lines are not records: skipped", journal.path, bad)
    if last > 0:
        records = records[-last:]
    emit(records, as_json, render_history)
