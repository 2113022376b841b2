"""Everything that talks to the kernel's IPVS: /proc readers, netlink, the sync protocol."""
