"""What one director process keeps between two calls into the director layer."""

from lvs_hooks.config import Config
from lvs_hooks.director.fwmark_repair import RepairState
from lvs_hooks.snapshot import SnapshotStore


class Director:
    """The configuration, and the fwmark templates under repair: the backup's periodic repair
    fills that state, and the MASTER transition's reseed, in the same process, finishes what it
    left (the table shows those templates with port 0 and the 1 s the repair gave them)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.repair = RepairState()

    def store(self) -> SnapshotStore:
        return snapshot_store(self.cfg)


def snapshot_store(cfg: Config) -> SnapshotStore:
    return SnapshotStore(cfg.paths.state_dir, keep=cfg.snapshot.keep)
