"""`snapshot`, `reseed`, `status`: the core commands on persistence templates."""

import logging
import os
import sys
from typing import Any, Dict, Optional, Type

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.director import Director
from lvs_hooks.director.reseed import reseed
from lvs_hooks.director.snapshot import take_snapshot
from lvs_hooks.director.state import snapshot_store
from lvs_hooks.door import (
    SOCKET_NAME,
    AgentConnection,
    NoAgent,
    hello_message,
    request_message,
)
from lvs_hooks.errors import (
    KernelError,
    LvsHooksError,
    ReseedIncomplete,
    SnapshotError,
    UsageError,
)
from lvs_hooks.health import STATE_NAMES, UNKNOWN, check_line, gather, judge, read_ipvs
from lvs_hooks.status import build_status, render_status
from lvs_hooks.table.compare import Comparison, render

log = logging.getLogger(__name__)


# A dump of a million templates takes a few seconds; a whole read of such a table, which the
# agent does only when its table in memory is not ready, takes minutes.
AGENT_REQUEST_TIMEOUT = 600.0


@command("snapshot")
@click.option("--list", "list_", is_flag=True, help="List the stored generations instead.")
@click.option(
    "--from-kernel",
    is_flag=True,
    help="Read /proc/net/ip_vs_conn here, even when the agent keeps the table in memory.",
)
@json_option
@pass_app
def snapshot_cmd(app: AppContext, list_: bool, from_kernel: bool, as_json: bool) -> None:
    """Store every persistence template (and the services they use) on disk: the agent's dump
    of its table in memory when an agent runs, else a read of the kernel's table."""
    if list_:
        gens = [g.to_dict() for g in snapshot_store(app.config).generations()]
        emit(gens, as_json, _render_generations)
        return
    report = None if from_kernel else ask_agent(app, "snapshot", SnapshotError)
    if report is None:
        report = take_snapshot(app.config, reason="snapshot command")
    emit(report, as_json, render_snapshot)


def ask_agent(
    app: AppContext,
    request: str,
    error: Type[LvsHooksError],
    args: Optional[Dict[str, Any]] = None,
) -> Optional[dict]:
    """The agent's report for `request` with its `args` (events.inbox), None when no agent
    takes it (then the caller does the work itself); `error` when the agent tried and
    failed."""
    path = os.path.join(app.config.paths.run_dir, SOCKET_NAME)
    try:
        conn = AgentConnection(path, timeout=AGENT_REQUEST_TIMEOUT)
    except NoAgent as e:
        log.info("%s: no agent on %s (%s): doing it in this process", request, path, e)
        return None
    try:
        reply = conn.exchange(
            request_message(os.path.abspath(app.config_path), request, args=args)
        )
    except NoAgent as e:
        log.warning("%s: the agent on %s did not answer (%s): doing it in this process",
                    request, path, e)
        return None
    finally:
        conn.close()
    if reply.get("ok") is True and isinstance(reply.get("report"), dict):
        return reply["report"]
    if "exit_code" in reply:  # it tried, and an operator can act on why it failed
        raise error(f"{request} by the agent: {reply.get('reason')}")
    log.warning("%s: the agent refused (%s): doing it in this process", request,
                reply.get("reason"))
    return None


def render_snapshot(r: dict) -> str:
    if "ms_dump" in r:
        how = f"dumped from the agent's table in memory in {r['ms_dump']:.0f} ms"
        if r.get("joined"):
            how += f", by the dump under way for the {r.get('reason', 'periodic snapshot')}"
    else:
        how = f"table read {r['ms_read_table']:.0f} ms"
    return (
        f"snapshot {r['path']}: {r['templates']} templates, {r['services']} services "
        f"({how}, total {r['ms']:.0f} ms)"
    )


def _render_generations(gens: list) -> str:
    if not gens:
        return "no snapshots"
    lines = [f"{'AGE':>8}  {'TEMPLATES':>9}  {'SERVICES':>8}  FILE"]
    for g in gens:
        state = "" if g.get("ok", True) else f"  REFUSED: {g.get('error')}"
        age = g.get("age")
        age_s = "?" if age is None else _age(age)
        lines.append(
            f"{age_s:>8}  {g.get('templates', '?'):>9}  {g.get('services', '?'):>8}  "
            f"{g['path']}{state}"
        )
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


@command("reseed")
@click.option("--from", "from_file", metavar="FILE", help="Reseed from this snapshot file.")
@click.option("--latest", is_flag=True, help="Reseed from the newest good snapshot (default).")
@click.option("--dry-run", is_flag=True, help="Show the plan; send nothing.")
@json_option
@pass_app
def reseed_cmd(
    app: AppContext, from_file: Optional[str], latest: bool, dry_run: bool, as_json: bool
) -> None:
    """Put the templates of a snapshot back into this director's kernel and verify them."""
    if from_file and latest:
        raise UsageError("--from and --latest exclude each other")
    report = reseed(Director(app.config), from_file, dry_run)
    emit(report, as_json, _render_reseed)
    if not dry_run and report["missing"]:
        raise ReseedIncomplete(
            f"{report['missing']} of {report['planned']} planned templates not verified"
        )


def _render_reseed(r: dict) -> str:
    lines = [
        f"snapshot: {r['snapshot'] or 'none'} (age {r['snapshot_age_s']:.0f} s), "
        f"{r['seen']} templates",
        f"planned {r['planned']}, sent {r['sent']}, verified {r['verified']}, "
        f"missing {r['missing']}  ({r['ms']:.0f} ms)",
    ]
    for reason, n in sorted(r["skipped"].items()):
        ex = "; ".join(r["skipped_examples"].get(reason, []))
        lines.append(f"skipped {n}: {reason}" + (f"  e.g. {ex}" if ex else ""))
    if r.get("dry_run"):
        lines.append("dry run: nothing sent. First templates that would be sent:")
        lines.extend(f"  {x}" for x in r.get("would_send", []))
    elif r.get("missing_examples"):
        lines.append("not verified, e.g.: " + "; ".join(r["missing_examples"]))
    for w in r.get("warnings", []):
        lines.append(f"warning: {w}")
    return "\n".join(lines)


@command("status")
@click.option(
    "--from-kernel",
    is_flag=True,
    help="Read /proc/net/ip_vs_conn here, even when the agent keeps the table in memory.",
)
@click.option(
    "--check",
    is_flag=True,
    help="One line and a monitoring plugin's exit code: 0 OK, 1 WARNING, 2 CRITICAL, "
    "3 UNKNOWN. Reads no connection table.",
)
@json_option
@pass_app
def status_cmd(app: AppContext, from_kernel: bool, check: bool, as_json: bool) -> None:
    """Role, last transition, agent, warm-up gate, last push, periodic duties; templates per
    service and real server, sync daemons, timeouts, newest snapshot: from the agent's table in
    memory when an agent keeps one and the kernel's table is large, else from a read of the
    kernel's table. Without IPVS it says what it could not read and reports the rest."""
    if check:
        _check(app, as_json)
        return
    cfg = app.config
    agent = probe_agent(app.config_path, cfg.paths.run_dir)
    report = None
    if not from_kernel and agent["running"] and not agent.get("busy"):
        report = ask_agent(app, "status", KernelError)
    if report is None:
        report = build_status(cfg, snapshot_store(cfg), from_kernel=from_kernel)
    # The health part: files and a probe of the agent; an agent's report carries its own.
    if "health" not in report:
        report["health"] = gather(cfg, agent=agent)
    emit(report, as_json, render_status)


# How long the probe waits for the agent's hello: well within a monitoring plugin's own limit
# (check_nrpe: 10 s, with this command's start-up in it).
PROBE_TIMEOUT = 4.0


def probe_agent(config_path: str, run_dir: str, timeout: Optional[float] = None) -> dict:
    """Whether an agent answers on `<run_dir>/agent.sock` (a hello, as a door says it):
    {"running": True/False, or None when this process may not even ask, "busy", "detail"}.

    A socket that takes the connection (or holds it in its backlog) and gives no hello in
    `timeout` is an agent that runs and is busy ("busy": True), as the doors take it: lab,
    a 1-CPU director under load, an agent silent for up to 8 s between answers was reported
    "not running" by a 2-s probe while it held the events. Killed or crashed, nobody listens."""
    path = os.path.join(run_dir, SOCKET_NAME)
    try:
        conn = AgentConnection(path, timeout=PROBE_TIMEOUT if timeout is None else timeout)
    except NoAgent as e:
        if "Permission denied" in str(e):  # not root: the run directory is root's alone
            return {"running": None, "busy": False, "detail": f"{path}: {e}"}
        if e.silent:  # the backlog is full: someone listens and does not accept
            return {"running": True, "busy": True, "detail": f"{path}: {e}"}
        return {"running": False, "busy": False, "detail": f"{e} on {path}"}
    try:
        reply = conn.exchange(hello_message(os.path.abspath(config_path), "status"))
    except NoAgent as e:
        return {"running": bool(e.silent), "busy": bool(e.silent), "detail": f"{path}: {e}"}
    finally:
        conn.close()
    if reply.get("ok") is True:
        return {"running": True, "busy": False, "detail": f"answers on {path}"}
    # it answered, and refused: it runs, with another config or another wire version
    return {"running": True, "busy": False,
            "detail": f"answers on {path} but refused: {reply.get('reason')}"}


def _check(app: AppContext, as_json: bool) -> None:
    """`status --check`: the plugin convention only, whatever goes wrong (an unreadable config
    is UNKNOWN, not the CLI's exit 2, which a monitoring system would read as CRITICAL)."""
    try:
        cfg = app.config
        agent = probe_agent(app.config_path, cfg.paths.run_dir)
        h = gather(cfg, agent=agent, ipvs=read_ipvs)
        state, reasons, notes = judge(h, cfg)
        line = check_line(state, reasons, notes)
    except LvsHooksError as e:
        h, state, reasons, notes = {}, UNKNOWN, [e.format_message()], []
        line = check_line(state, reasons, notes)
    except Exception as e:  # a bug: still one line and UNKNOWN; the traceback to the log
        log.exception("status --check failed")
        h, state, reasons, notes = {}, UNKNOWN, [f"bug: {type(e).__name__}: {e}"], []
        line = check_line(state, reasons, notes)
    if as_json:
        emit({"state": STATE_NAMES[state], "exit_code": state, "reasons": reasons,
              "notes": notes, "line": line, "health": h}, True, str)
    else:
        click.echo(line)
    sys.exit(state)


@command("table-check")
@json_option
@pass_app
def table_check_cmd(app: AppContext, as_json: bool) -> None:
    """Compare the agent's table in memory with a read of the kernel's table (a whole read of
    /proc/net/ip_vs_conn, at the read's cost): every template that differs. Exit 1 if any."""
    report = ask_agent(app, "table-check", UsageError)
    if report is None:
        raise LvsHooksError("no agent answers: there is no table in memory to check")
    emit(report, as_json, render_table_check)
    if report.get("mismatches"):
        raise LvsHooksError(f"{report['mismatches']} templates differ between the table in "
                            "memory and the kernel's")


def render_table_check(r: dict) -> str:
    c = Comparison(**{k: v for k, v in r.items() if k in Comparison.__dataclass_fields__})
    extra = "" if r.get("ready") else " (the table is not the table yet: the duties read /proc)"
    return render(c) + extra
