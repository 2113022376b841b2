"""`rules show|apply|remove|verify`: the loop-protection firewall rules (see lvs_hooks.rules)."""

from typing import Any, Dict, Optional

import click

from lvs_hooks.cli import AppContext, cli, emit, json_option, pass_app
from lvs_hooks.errors import RulesDrift
from lvs_hooks.rules.manager import RulesManager


def _manager(app: AppContext) -> RulesManager:
    return RulesManager(app.config)


def dry_run_option(f):
    return click.option(
        "--dry-run",
        is_flag=True,
        help="Show the batch that would go to the kernel; change nothing.",
    )(f)


@cli.group("rules")
def rules_group() -> None:
    """Loop protection for directors that are also real servers (DR ping-pong)."""


@rules_group.command("show")
@json_option
@pass_app
def show_cmd(app: AppContext, as_json: bool) -> None:
    """The configured services, the rules in the kernel with their counters, drift, and whether
    net.ipv4.vs.backup_only fits this director."""
    emit(_manager(app).show(), as_json, render_show)


@rules_group.command("apply")
@click.option(
    "--role",
    type=click.Choice(["master", "backup", "fault"], case_sensitive=False),
    required=True,
    help="The role whose rules to install (fault: the backup rules).",
)
@dry_run_option
@json_option
@pass_app
def apply_cmd(app: AppContext, role: str, dry_run: bool, as_json: bool) -> None:
    """Install the rules a role needs, in one atomic batch per table."""
    emit(_manager(app).apply(role, dry_run=dry_run), as_json, render_apply)


@rules_group.command("remove")
@dry_run_option
@json_option
@pass_app
def remove_cmd(app: AppContext, dry_run: bool, as_json: bool) -> None:
    """Remove every rule and chain (nft: the table) of lvs-hooks; the user's rules stay."""
    emit(_manager(app).remove(dry_run=dry_run), as_json, render_apply)


@rules_group.command("verify")
@click.option(
    "--role",
    type=click.Choice(["master", "backup", "fault"], case_sensitive=False),
    default=None,
    help="The role to check against (default: the one last applied during this boot).",
)
@json_option
@pass_app
def verify_cmd(app: AppContext, role: Optional[str], as_json: bool) -> None:
    """Compare the kernel with what the role needs; exit 9 on any difference."""
    report = _manager(app).verify(role)
    emit(report, as_json, render_verify)
    if not report["ok"]:
        raise RulesDrift(
            f"rules drift for role {report['role']}: {len(report['drift'])} difference(s): "
            f"{report['drift'][0]}"
        )


# -- rendering


def render_apply(r: Dict[str, Any]) -> str:
    lines = []
    what = f"role {r['role']}" if r.get("role") else "remove"
    changes = r.get("changes") or []
    lines.append(
        f"{what}: {len(changes)} change(s), {r.get('rules', 0)} rules"
        f" ({r.get('backend', 'no firewall call')}), {r.get('ms', 0):.0f} ms"
    )
    lines.extend(f"  {c}" for c in changes)
    if r.get("peers_unknown"):
        lines.append(
            f"  warning: MAC of peer {', '.join(r['peers_unknown'])} unknown: its forwarded "
            "packets are not guarded (set rules.peer_macs)"
        )
    if r.get("backup_only"):
        lines.append(f"  net.ipv4.vs.backup_only: {r['backup_only']}")
    if "batch" in r:
        lines.append("batch (dry run, not sent):" if r["batch"] else "batch: empty (dry run)")
        if r["batch"]:
            lines.append(r["batch"])
    return "\n".join(lines)


def render_verify(r: Dict[str, Any]) -> str:
    if r.get("note"):
        return f"rules: {r['note']}"
    head = f"role {r['role']}: " + ("rules as needed" if r["ok"] else "DRIFT")
    return "\n".join([head] + [f"  {d}" for d in r["drift"]])


def render_show(r: Dict[str, Any]) -> str:
    lines = ["services:"]
    if not r["services"]:
        lines.append("  none configured (rules.services)")
    for s in r["services"]:
        mark = f" {s['fwmark']}" if s.get("fwmark") else ""
        lines.append(f"  {s['service']:<28} {s['mode']}{mark}")
    if "peer_macs_error" in r:
        lines.append(f"peer MACs: {r['peer_macs_error']}")
    elif r.get("peer_macs"):
        lines.append(
            "peer MACs: " + ", ".join(f"{p['mac']} ({p['source']})" for p in r["peer_macs"])
        )
    if "backend_error" in r:
        lines.append(f"backend: {r['backend_error']}")
    elif "backend" in r:
        lines.append(f"backend: {r['backend']} ({r['backend_why']})")
    a = r.get("applied")
    lines.append(
        f"applied this boot: role {a['role']} ({a['backend']})" if a else "applied this boot: no"
    )
    if "kernel_role" in r:
        lines.append(f"kernel pointer: {r['kernel_role'] or '-'}")
    rows = r.get("kernel_rules") or []
    lines.append(f"rules in the kernel: {len(rows)}")
    for row in rows:
        count = f"{row['packets']:>10} pkts " if row.get("packets") is not None else " " * 16
        fam = f"v{row['family']} " if row.get("family") else ""
        lines.append(f"  {count}{fam}{row['table']}/{row['chain']}: {row['rule']}")
    if r.get("drift"):
        lines.append("drift against the applied role:")
        lines.extend(f"  {d}" for d in r["drift"])
    elif "drift" in r:
        lines.append("drift against the applied role: none")
    b = r["backup_only"]
    value = "n/a" if b["value"] is None else b["value"]
    daemons = "unknown" if b["daemons"] is None else (", ".join(b["daemons"]) or "none")
    lines.append(
        f"net.ipv4.vs.backup_only: {value} (sync daemons: {daemons}; "
        f"rules.backup_only: {'true' if b['configured'] else 'false'})"
    )
    lines.append(f"  {b['advice']}")
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
