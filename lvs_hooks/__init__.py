"""lvs-hooks: keepalived notify hooks that keep IPVS persistence across director failover."""

__version__ = "0.1.0"
