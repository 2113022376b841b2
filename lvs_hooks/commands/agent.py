"""`lvs-hooks agent`, `push` and `handover`: what needs a peer (issue 6); and the agent as the
director's one brain for keepalived's events, which the doors hand it (issue 12)."""

import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.director import Director
from lvs_hooks.director.duties import Duties
from lvs_hooks.events.inbox import Inbox, PeriodicThread
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.role import read_role
from lvs_hooks.events.sequencer import Plan, Sequencer
from lvs_hooks.events.transitions import lock_timeout_for, make_planner

log = logging.getLogger(__name__)


@dataclass
class DirectorParts:
    """What runs keepalived's events and the periodic duties: the agent's event and periodic
    threads use it, and so does a FIFO door whose agent went away."""

    director: Director
    sequencer: Sequencer
    planner: Callable[[Event], Plan]
    lock_timeout: Callable[[Event], float]
    duty: Callable[[Optional[str], Callable[[], bool]], Any]  # (role, should_yield)
    period: float  # seconds between two calls of duty


def director_parts(app: AppContext) -> DirectorParts:
    """The one place that builds the planner and the periodic duties of a process."""
    cfg = app.config
    # One director for the transitions, the duties and the agent's own kernel work: the MASTER
    # reseed finishes the fwmark repairs the same process began as backup.
    director = Director(cfg)
    duties = Duties(director, lambda: read_role(cfg.paths.run_dir))
    return DirectorParts(
        director=director,
        sequencer=Sequencer(
            cfg.paths.run_dir, Journal(cfg.paths.state_dir, cfg.transitions.journal_keep)
        ),
        planner=make_planner(director),
        lock_timeout=lambda event: lock_timeout_for(event, cfg.transitions),
        duty=duties.run_due,
        period=duties.period,
    )


@command("agent")
@pass_app
def agent_cmd(app: AppContext) -> None:
    """Run the agent in the foreground until SIGTERM (lvs-hooks-agent.service): keepalived's
    events that the doors (`notify`, `master` ..., `fifo`) hand over, and their transitions;
    the periodic duties (keeper, fwmark repair, snapshots); full-table pushes while master,
    collecting and checking them while backup; the start-up reseed from disk and the warm-up
    gate's track file."""
    from lvs_hooks.agent import Agent, KernelOps, WarmGate
    from lvs_hooks.control.channel import ControlChannel
    from lvs_hooks.handover import node_name
    from lvs_hooks.push.collector import SyncGroupListener

    cfg = app.config
    parts = director_parts(app)
    inbox = Inbox(
        cfg.paths.run_dir, app.config_path, parts.sequencer, parts.planner, parts.lock_timeout
    )
    periodic = PeriodicThread(
        parts.duty, parts.period, lambda: read_role(cfg.paths.run_dir), inbox.busy
    )
    channel = listener = None
    if cfg.control.key_file:
        channel = ControlChannel.from_config(cfg, sender=node_name(cfg))
        listener = SyncGroupListener(cfg.sync.interface, cfg.sync.group, cfg.sync.port)
    stop = []

    def on_term(signum, frame):
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    agent = Agent(
        cfg,
        KernelOps(parts.director),
        channel,
        listener,
        lambda: read_role(cfg.paths.run_dir),
        WarmGate(cfg),
        beside=(inbox, periodic),
    )
    try:
        agent.run(lambda: bool(stop))
    finally:
        for x in (channel, listener):
            if x is not None:
                x.close()
    log.info("agent stopped")


@command("push")
@json_option
@pass_app
def push_cmd(app: AppContext, as_json: bool) -> None:
    """Push the whole table to the peers now (announced on the control channel if one is
    configured), and print the figures."""
    from lvs_hooks.agent import KernelOps
    from lvs_hooks.control.channel import ControlChannel
    from lvs_hooks.director import Director
    from lvs_hooks.handover import node_name

    cfg = app.config
    channel = None
    if cfg.control.key_file:
        channel = ControlChannel.from_config(cfg, sender=f"{node_name(cfg)}/push")
    try:
        fig = KernelOps(Director(cfg)).push(channel)
    finally:
        if channel is not None:
            channel.close()
    emit(fig, as_json, _render_push)


def _render_push(f: dict) -> str:
    return (
        f"push {f['push_id']}: {f['planned']} templates in {f['datagrams']} datagrams, "
        f"{f['bytes']} bytes, {f['ms']:.0f} ms on the wire ({f['rate']:.0f}/s)"
        + (f"; skipped {f['skipped']}" if f["skipped"] else "")
        + ("" if f["announced"] else " (not announced: no control channel)")
    )


@command("handover")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the peer.")
@click.option("--cancel", is_flag=True, help="Clear the handover flag (after the maintenance).")
@json_option
@pass_app
def handover_cmd(app: AppContext, timeout: float, cancel: bool, as_json: bool) -> None:
    """Hand the master role to a peer without losing a client: push the table, wait until a
    peer confirms it holds every template, then lower this director's priority through the
    warm-up gate's track file and wait until keepalived has made it backup."""
    from lvs_hooks import handover

    if cancel:
        emit(handover.cancel(app), as_json, lambda r: f"handover flag cleared: {r['reason']}")
        return
    emit(handover.handover(app, timeout), as_json, _render_handover)


def _render_handover(r: dict) -> str:
    return (
        f"handed over to {r['peer']}: {r['templates']} templates moved, {r['peer_verified']} "
        f"verified there ({r['peer_put_back']} put back, {r['peer_repointed']} re-pointed), "
        f"confirmed after {r['ms_to_confirmation']} ms; now {r['role']} after {r['ms']} ms"
    )
