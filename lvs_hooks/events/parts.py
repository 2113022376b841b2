"""What a process that runs keepalived's events holds: one director, the sequencer, the planner
and the periodic duties. The agent's event and periodic threads use it, and so do the FIFO
reader and a FIFO door whose agent went away: built in this one place."""

from dataclasses import dataclass
from typing import Callable, Optional

from lvs_hooks import metrics
from lvs_hooks.config import Config
from lvs_hooks.director import Director
from lvs_hooks.director.duties import Duties
from lvs_hooks.director.live import LiveTable
from lvs_hooks.events.journal import Journal
from lvs_hooks.events.keepalived import Event
from lvs_hooks.events.role import read_role
from lvs_hooks.events.sequencer import Outcome, Plan, Sequencer
from lvs_hooks.events.transitions import lock_timeout_for, make_planner
from lvs_hooks.health import count_transition


class ReportingSequencer(Sequencer):
    """The sequencer whose transitions that ran (done or failed) rewrite the metrics file
    (metrics.textfile) once the transition lock is released: every process that runs
    keepalived's events (the agent, the FIFO reader, a notify door without an agent)."""

    def __init__(self, cfg: Config, journal: Journal):
        super().__init__(cfg.paths.run_dir, journal)
        self.cfg = cfg

    def handle(self, event: Event, planner: Callable[[Event], Plan],
               lock_timeout: float) -> Outcome:
        outcome = super().handle(event, planner, lock_timeout)
        if outcome.outcome in ("done", "failed", "superseded"):
            count_transition(self.cfg.paths.run_dir, event.state, outcome.outcome)
        if outcome.outcome in ("done", "failed"):
            metrics.write_metrics(self.cfg, f"transition {event.state} {event.name}")
        return outcome


def journal_for(cfg: Config) -> Journal:
    return Journal(cfg.paths.state_dir, cfg.transitions.journal_keep)


@dataclass
class DirectorParts:
    director: Director
    sequencer: Sequencer
    planner: Callable[[Event], Plan]
    lock_timeout: Callable[[Event], float]
    duty: Callable[[Optional[str], Callable[[], bool]], None]  # (role, should_yield)
    period: float  # seconds between two calls of duty


def director_parts(cfg: Config, live: Optional[LiveTable] = None) -> DirectorParts:
    """`live`: the agent's table in memory (the duties and transitions plan from it)."""
    # One director for the transitions, the duties and the agent's own kernel work: the MASTER
    # reseed finishes the fwmark repairs the same process began as backup.
    director = Director(cfg, live)
    duties = Duties(director, lambda: read_role(cfg.paths.run_dir))

    def duty(role: Optional[str], should_yield: Callable[[], bool]) -> None:
        duties.run_due(role, should_yield)
        metrics.write_periodic(cfg)  # at most every metrics.MIN_PERIODIC seconds

    return DirectorParts(
        director=director,
        sequencer=ReportingSequencer(cfg, journal_for(cfg)),
        planner=make_planner(director),
        lock_timeout=lambda event: lock_timeout_for(event, cfg.transitions),
        duty=duty,
        period=duties.period,
    )
