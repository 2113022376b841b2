"""`explain`, `doctor`, `init`: answers for the operator, from the live director and its
configuration.

    explain [CLIENT] [--from-kernel] [--json]
                                    why each template exists, which timeout it holds, when it
                                    ends and what happens then
    doctor [--keepalived-conf FILE] [--json]
                                    findings with severity, evidence and fix; exit 0 clean,
                                    1 warnings, 2 errors, 3 nothing it could read
    init [--from-keepalived FILE] [--output FILE] [--force]
                                    a starter lvs-hooks config (derived from keepalived.conf)
"""

import ipaddress
import os
from typing import Optional

import click

from lvs_hooks.atomicfile import write_atomic
from lvs_hooks.cli import AppContext, command, emit, emit_lines, json_option, pass_app
from lvs_hooks.errors import AgentError, UsageError


@command("explain")
@click.argument("client", required=False)
@click.option(
    "--from-kernel",
    is_flag=True,
    help="Read the kernel's table (/proc), not the agent's table in memory.",
)
@json_option
@pass_app
def explain_cmd(app: AppContext, client: Optional[str], from_kernel: bool, as_json: bool) -> None:
    """Why each persistence template exists and when it ends (or only CLIENT's).

    Asks the agent first: once its table in memory is the table and the kernel's is over
    table.read_budget, the agent's table is read instead of /proc (whose whole read costs the
    kernel time quadratic in its size). It keeps no connection one by one: each template then
    says when its client's last connection heard of ends."""
    # start-up: the CLI imports every command module; each loads its heavy parts when run
    from lvs_hooks.commands.templates import ask_agent
    from lvs_hooks.explain import build_explanation, explanation_lines

    if client is not None:
        try:
            client = str(ipaddress.ip_address(client))
        except ValueError:
            raise UsageError(f"CLIENT must be an IP address, got {client!r}") from None
    args = {"client": client} if client else None
    ask = None if from_kernel else (lambda: ask_agent(app, "explain", AgentError, args))
    # This process prints the report and exits: its objects are frozen out of the collector's
    # sight (explain's `frozen`).
    report = build_explanation(app.config, client, frozen=True, ask=ask)
    emit_lines(report, as_json, explanation_lines)


@command("doctor")
@click.option(
    "--keepalived-conf",
    "conf_path",
    metavar="FILE",
    default=None,
    help="keepalived's configuration (default /etc/keepalived/keepalived.conf).",
)
@json_option
@pass_app
@click.pass_context
def doctor_cmd(
    ctx: click.Context, app: AppContext, conf_path: Optional[str], as_json: bool
) -> None:
    """Check keepalived.conf, the kernel and the lvs-hooks config together.

    Also runs `keepalived -t -f FILE` when keepalived is installed, and says per persistent
    service how long a template lives on the master and on the backup.

    Exit code: 0 nothing found, 1 warnings, 2 errors, 3 nothing to check (no keepalived.conf it
    could read, and no IPVS service).
    """
    from lvs_hooks import trust
    from lvs_hooks.doctor import gather, render_report, run_checks  # start-up, as above

    hooks_path = app.config_path if os.path.lexists(app.config_path) else None
    # What every other command refuses is listed here instead, with the rest.
    untrusted = trust.problems([(hooks_path, "config file")] if hooks_path else [])
    cfg = app.unchecked_config  # a bad lvs-hooks config stops here, with its own one-line error
    untrusted += trust.problems(trust.config_paths(None, cfg))
    d = gather(cfg, conf_path, hooks_path, proc_root=cfg.paths.proc_root)
    d.untrusted = [e.message for e in untrusted]
    report = run_checks(d)
    emit(report, as_json, render_report)
    ctx.exit(report["exit_code"])


@command("init")
@click.option(
    "--from-keepalived",
    "conf_path",
    metavar="FILE",
    default=None,
    help="Derive the sync link, sync id and watched instance from this keepalived.conf.",
)
@click.option("--output", "-o", metavar="FILE", default=None, help="Write here, not to stdout.")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
def init_cmd(conf_path: Optional[str], output: Optional[str], force: bool) -> None:
    """Print a starter lvs-hooks configuration."""
    from lvs_hooks.config import dump_default_config, parse_config  # start-up, as above

    if conf_path is None:
        text = dump_default_config()
    else:
        # start-up, as above
        from lvs_hooks.doctor import local_addrs, starter_config
        from lvs_hooks.keepalived_conf import KeepalivedSetup, read_keepalived_conf

        setup = KeepalivedSetup.from_conf(read_keepalived_conf(conf_path))
        text = starter_config(setup, local_addrs() or ())
        parse_config(text, f"derived from {conf_path}")  # what we write must load
    if output is None:
        click.echo(text, nl=False)
        return
    if os.path.exists(output) and not force:
        raise UsageError(f"{output} exists (--force replaces it)")
    try:
        write_atomic(output, text.encode(), 0o644)
    except OSError as e:
        raise UsageError(f"cannot write {output}: {e.strerror or e}") from None
    click.echo(f"wrote {output}", err=True)
