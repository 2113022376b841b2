"""`lvs-hooks agent`, `push` and `handover`: what needs a peer (issue 6); and the agent as the
director's one brain for keepalived's events, which the doors hand it (issue 12)."""

import ipaddress
import logging
import signal
from typing import TYPE_CHECKING, List, Optional, Union

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.commands.templates import render_snapshot, render_table_check
from lvs_hooks.config import Config
from lvs_hooks.director import Director
from lvs_hooks.director.snapshot import take_snapshot
from lvs_hooks.director.state import snapshot_store
from lvs_hooks.errors import KernelError, UsageError
from lvs_hooks.events.inbox import Inbox
from lvs_hooks.events.parts import director_parts
from lvs_hooks.events.periodic import PeriodicThread
from lvs_hooks.events.role import read_role
from lvs_hooks.health import gather
from lvs_hooks.kernel.model import Service
from lvs_hooks.kernel.netlink import IPVS
from lvs_hooks.status import build_status, render_status

if TYPE_CHECKING:  # loaded when the agent runs (start-up of every other command)
    from lvs_hooks.director.live import LiveTable
    from lvs_hooks.door import Streamed

log = logging.getLogger(__name__)


@command("agent")
@pass_app
def agent_cmd(app: AppContext) -> None:
    """Run the agent in the foreground until SIGTERM (lvs-hooks-agent.service): keepalived's
    events that the doors (`notify`, `master` ..., `fifo`) hand over, and their transitions;
    the periodic duties (keeper, fwmark repair, snapshots); full-table pushes while master,
    collecting and checking them while backup; the start-up reseed from disk and the warm-up
    gate's track file."""
    # start-up: the CLI imports every command module; the agent's parts load when it runs
    from lvs_hooks.agent import Agent, KernelOps, WarmGate, note_push, note_wire
    from lvs_hooks.control.channel import ControlChannel
    from lvs_hooks.director.live import LiveTable, TableUpkeep
    from lvs_hooks.handover import node_name
    from lvs_hooks.kernel.synccapture import OutgoingSyncCapture
    from lvs_hooks.push.collector import SyncGroupListener

    cfg = app.config
    ifname = _sync_interface(cfg)
    live = upkeep = capture = None
    if cfg.table.enabled and ifname is not None:
        live = LiveTable(cfg)
        upkeep = TableUpkeep(live, _services)
        # what leaves from the sync port is a push of lvs-hooks, not this kernel's own stream
        capture = OutgoingSyncCapture(ifname, cfg.sync.port, own_port=cfg.sync.port)
    elif cfg.table.enabled:
        log.warning(
            "table in memory off: sync.interface is not set and no sync daemon runs to take it "
            "from; every duty reads the kernel's table"
        )
    parts = director_parts(app.config, live)
    inbox = Inbox(
        cfg.paths.run_dir, app.config_path, parts.sequencer, parts.planner, parts.lock_timeout,
        requests={
            # `lvs-hooks snapshot` by hand: a dump of the table in memory, no whole read
            "snapshot": lambda args: take_snapshot(
                cfg, reason="snapshot command, through the agent", live=parts.director.live
            ),
            # `lvs-hooks status`: templates from the table in memory when it is the table
            "status": lambda args: _status(cfg, parts.director.live),
            # `lvs-hooks table-check`: the table in memory against a read of the kernel's
            "table-check": lambda args: _table_check(live),
            # `lvs-hooks explain [CLIENT]`: the table in memory when it is the table, else
            # the command reads the kernel's
            "explain": lambda args: _explain(parts.director.live, args),
        },
        # as the commands print them, for a door that asks (door.ask_door)
        renderers={
            "snapshot": render_snapshot,
            "status": render_status,
            "table-check": render_table_check,
        },
    )
    periodic = PeriodicThread(
        parts.duty, parts.period, lambda: read_role(cfg.paths.run_dir), inbox.busy
    )
    channel = listener = None
    if cfg.control.key_file:
        # the one long-lived receiver: its replay window survives a restart
        channel = ControlChannel.from_config(cfg, sender=node_name(cfg), persist=True)
    if ifname is not None and (channel is not None or live is not None):
        listener = SyncGroupListener(ifname, cfg.sync.group, cfg.sync.port)
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
        beside=[p for p in (upkeep, inbox, periodic) if p is not None],
        capture=capture,
        live=live,
        on_push=note_push(cfg),
        on_wire=note_wire(cfg),
    )
    try:
        agent.run(lambda: bool(stop))
    finally:
        for x in (channel, listener, capture):
            if x is not None:
                x.close()
    log.info("agent stopped")


def _status(cfg: Config, live: Optional["LiveTable"]) -> dict:
    report = build_status(cfg, snapshot_store(cfg), live=live)
    # the health part as `status` reads it, the agent being the one that answers
    report["health"] = gather(cfg, agent={"running": True, "detail": "this report is its own"})
    return report


def _explain(live: Optional["LiveTable"], args: dict) -> Union[dict, "Streamed"]:
    from lvs_hooks.explain_table import table_answer  # start-up, as the agent's other parts

    client = args.get("client")
    if client is not None:
        try:
            if not isinstance(client, str):
                raise ValueError(client)
            ipaddress.ip_address(client)
        except ValueError:
            raise UsageError("explain: the client asked about is not an IP address") from None
    return table_answer(live, _services() if live is not None else [], client)


def _table_check(live: Optional["LiveTable"]) -> dict:
    if live is None:
        raise UsageError("the agent keeps no table in memory (table.enabled is off, or no sync "
                         "interface is known)")
    return live.check()


def _sync_interface(cfg: Config) -> Optional[str]:
    """sync.interface, else that of a sync daemon running now (keepalived's)."""
    if cfg.sync.interface:
        return cfg.sync.interface
    try:
        with IPVS() as ipvs:
            return next((d.ifname for d in ipvs.daemons()), None)
    except KernelError as e:
        log.warning("no sync interface: %s", e.format_message())
        return None


def _services() -> List[Service]:
    with IPVS() as ipvs:
        return ipvs.services()


@command("push")
@json_option
@pass_app
def push_cmd(app: AppContext, as_json: bool) -> None:
    """Push the whole table to the peers now (announced on the control channel if one is
    configured), and print the figures."""
    # start-up, as for the agent command
    from lvs_hooks.agent import KernelOps
    from lvs_hooks.control.channel import ControlChannel
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
    from lvs_hooks import handover  # start-up, as for the agent command

    if cancel:
        r = handover.cancel(app.config)
        emit(r, as_json, lambda r: f"handover flag cleared: {r['reason']}")
        return
    emit(handover.handover(app.config, timeout), as_json, _render_handover)


def _render_handover(r: dict) -> str:
    return (
        f"handed over to {r['peer']}: {r['templates']} templates moved, {r['peer_verified']} "
        f"verified there ({r['peer_put_back']} put back, {r['peer_repointed']} re-pointed), "
        f"confirmed after {r['ms_to_confirmation']} ms; now {r['role']} after {r['ms']} ms"
    )
