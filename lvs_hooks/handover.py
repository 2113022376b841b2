"""A planned switchover for maintenance: the master hands its clients to a peer, losing none.

1. Push the whole table to the sync group, announced on the control channel.
2. Ask (status-request, every second) until a peer's agent reports that push complete and
   every template of it in its table (it puts back what its kernel dropped and re-points
   stale templates no connection uses before it says so).
3. Only then give up MASTER: the warm-up gate's handover flag puts 1 in keepalived's track
   file, which lowers this director's priority below its peer's; the peer preempts.
4. Wait until keepalived has made this director BACKUP (its transition ran), and report.

If no peer confirms, nothing is given up. `--cancel` (after the maintenance) clears the flag.
"""

import logging
import socket
import time
from typing import Any, Callable, Optional

from lvs_hooks.agent import AgentKernel, ControlPort, KernelOps
from lvs_hooks.config import Config
from lvs_hooks.control.channel import ControlChannel
from lvs_hooks.director import Director
from lvs_hooks.errors import HandoverFailed
from lvs_hooks.events.role import read_role
from lvs_hooks.warmup import WarmupStore, refresh, refresh_detail

log = logging.getLogger(__name__)

PUSH_ATTEMPTS = 3  # a peer that got a push incomplete gets another, this many in all
ASK_EVERY = 1.0


def node_name(cfg: Config) -> str:
    return cfg.control.name or socket.gethostname()


def _is_ours(sender: str, name: str) -> bool:
    return sender == name or sender.startswith(name + "/")


def handover(
    cfg: Config,
    timeout: float,
    ops: Optional[AgentKernel] = None,
    channel: Optional[ControlPort] = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict:
    run_dir = cfg.paths.run_dir
    role = read_role(run_dir)
    if role != "MASTER":
        raise HandoverFailed(
            f"this director is {role or 'in no known role (no transition since boot)'}: "
            "only the master hands over"
        )
    name = node_name(cfg)
    ops = ops or KernelOps(Director(cfg))
    own: Optional[ControlChannel] = None
    if channel is None:
        channel = own = ControlChannel.from_config(cfg, sender=f"{name}/handover")
    ch: ControlPort = channel
    t0 = clock()
    deadline = t0 + timeout
    try:
        confirmed = None
        pushes = []
        for _attempt in range(PUSH_ATTEMPTS):
            fig = ops.push(ch)
            pushes.append(fig)
            push_id = fig["push_id"]
            got = _await_confirmation(ch, name, push_id, deadline, clock)
            if got is None:
                break  # nobody answered in time: another push would not help
            sender, last = got
            if last.get("complete") and last.get("missing") == 0:
                confirmed = (sender, last)
                break
            log.warning("handover: %s got push %s incomplete (%s); pushing again", sender,
                        push_id, last.get("reason") or f"{last.get('missing')} missing")
        if confirmed is None:
            raise HandoverFailed(
                f"no peer confirmed the push of {pushes[-1]['planned']} templates within "
                f"{timeout:g} s: this director stays master, nothing was given up"
            )
        peer, last = confirmed
        t_confirmed = clock()
        log.info("handover: %s holds push %s: %d templates verified; giving up MASTER", peer,
                 last["push_id"], last.get("verified", 0))
        WarmupStore(run_dir).set_handover(True)
        refresh(cfg)
        # keepalived gets the whole timeout to demote us, however long the confirmation took
        demote_by = clock() + timeout
        while read_role(run_dir) == "MASTER":
            if clock() >= demote_by:
                WarmupStore(run_dir).set_handover(False)
                refresh(cfg)
                raise HandoverFailed(
                    f"{peer} confirmed {last.get('verified', 0)} templates, but keepalived kept "
                    f"this director master for {timeout:g} s after the track file said 1: is "
                    "the track file in keepalived.conf (as in "
                    "/usr/share/doc/lvs-hooks/lvs-hooks-warmup.conf), with a weight larger than "
                    "the priority gap? The handover flag is cleared."
                )
            time.sleep(0.1)
        report = {
            "peer": peer,
            "push_id": last["push_id"],
            "templates": pushes[-1]["planned"],
            "pushes": len(pushes),
            "peer_verified": last.get("verified", 0),
            "peer_put_back": last.get("put_back", 0),
            "peer_repointed": last.get("repointed", 0),
            "peer_stale_in_use": last.get("stale_in_use", 0),
            "bytes": sum(p["bytes"] for p in pushes),
            "ms_to_confirmation": round((t_confirmed - t0) * 1000),
            "ms": round((clock() - t0) * 1000),
            "role": read_role(run_dir),
        }
        log.info(
            "handover done: %(templates)d templates moved to %(peer)s (%(peer_verified)d "
            "verified there, %(pushes)d push(es), %(bytes)d bytes), confirmed after "
            "%(ms_to_confirmation)d ms, this director %(role)s after %(ms)d ms",
            report,
        )
        return report
    finally:
        if own is not None:
            own.close()


def _await_confirmation(ch: Any, name: str, push_id: str, deadline: float, clock):
    """(peer name, its last_push) once a peer reports on `push_id`; None at the deadline."""
    next_ask = 0.0
    while True:
        now = clock()
        if now >= deadline:
            return None
        if now >= next_ask:
            ch.send("status-request", {"push_id": push_id})
            next_ask = now + ASK_EVERY
        got = ch.recv(max(0.0, min(next_ask, deadline) - clock()))
        if got is None:
            continue
        msg, _src = got
        if msg.kind != "status-reply" or _is_ours(msg.sender, name):
            continue
        last = msg.body.get("last_push") or {}
        if last.get("push_id") == push_id:
            return msg.sender, last


def cancel(cfg: Config) -> dict:
    store = WarmupStore(cfg.paths.run_dir)
    state = store.load()
    if state is not None and state.handover:
        # only then: a director with no state has no flag, and making one would start its
        # warm-up clock as if an agent ran
        store.set_handover(False)
    r = refresh_detail(cfg)
    log.info("handover cancelled: %s", r.decision.reason)
    return {"eligible": r.decision.eligible, "reason": r.decision.reason}
