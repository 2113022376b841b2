"""`ready`: the warm-up gate's verdict, for keepalived's vrrp_script (exit 0: may preempt)."""

import logging

import click

from lvs_hooks.cli import AppContext, command, emit, json_option, pass_app
from lvs_hooks.warmup import refresh_detail

log = logging.getLogger(__name__)


@command("ready")
@json_option
@pass_app
def ready_cmd(app: AppContext, as_json: bool) -> None:
    """Whether this director's table is warm enough to preempt: exit 0 if so, 1 if not.

    Also writes the warm-up track file (0 or 1) that keepalived's track_file reads. For a
    vrrp_script with a negative weight; see /usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf.
    """
    r = refresh_detail(app.config, log_change=False)
    d = r.decision
    figures = r.state.figures if r.state is not None else {}
    log.info(
        "warm-up gate: %s: %s (track file %s %s %d%s)",
        "eligible" if d.eligible else "not eligible",
        d.reason,
        r.track_file,
        "now" if r.changed else "still",
        r.track_value,
        f"; figures {figures}" if figures else "",
    )
    report = {
        "eligible": d.eligible,
        "reason": d.reason,
        "state": r.state.to_dict() if r.state is not None else None,
        "track_file": r.track_file,
        "track_value": r.track_value,
    }
    emit(report, as_json, lambda rep: rep["reason"])
    if not d.eligible:
        click.get_current_context().exit(1)
