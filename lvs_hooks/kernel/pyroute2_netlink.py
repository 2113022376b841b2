"""pyroute2's generic netlink, without the rest of pyroute2.

`import pyroute2.netlink` runs pyroute2's package `__init__` first, and that imports everything
the library has: IPRoute, NDB and IPDB, conntrack, asyncio, 163 modules in all (pyroute2 0.9.7,
the release the packages bundle). kernel/netlink.py needs 17 of them. Measured on the
development host: 307 ms for the whole package, 103 ms for the 17. Under the lab's emulation,
with the modules read over 9p, `import lvs_hooks.cli` took 6.3 to 8.5 s before and 4.5 to 5.5 s
after (505 modules against 341): seconds at the start of every command.

So the package is entered bare: a module object for `pyroute2` with its real path and spec,
whose own `__init__` has not run. The submodules import as usual (none of them relies on the
package's `__init__`). The first name asked of the bare package that it lacks (`from pyroute2
import IPRoute`, in doctor.py and rules/peers.py) runs pyroute2's own `__init__` into it, once:
the rest of the process sees the whole library, as if nothing had been done.

If pyroute2 was imported already, or the bare import fails in a way another pyroute2 release
might bring, the package is imported the ordinary way instead.
"""

import importlib
import importlib.util
import sys
import threading
from types import ModuleType
from typing import Optional


def _enter_bare() -> Optional[ModuleType]:
    """The bare package in sys.modules, or None where the ordinary import is left to run."""
    if "pyroute2" in sys.modules:
        return None
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return None  # the ordinary import says what is missing
    pkg = importlib.util.module_from_spec(spec)
    loader = spec.loader

    lock = threading.Lock()

    def __getattr__(name: str) -> object:
        # PEP 562: only for names the module lacks. A submodule's name is the import system
        # asking before it imports that submodule (`from pyroute2 import config`): not ours.
        if name.startswith("__") or importlib.util.find_spec(f"pyroute2.{name}") is not None:
            raise AttributeError(name)
        with lock:  # two threads asking at once: one runs it, the other finds it done
            if pkg.__dict__.pop("__getattr__", None) is not None:
                loader.exec_module(pkg)  # pyroute2's own __init__, once
        return getattr(pkg, name)

    pkg.__dict__["__getattr__"] = __getattr__
    sys.modules["pyroute2"] = pkg
    return pkg


def _leave_bare() -> None:
    """After a failed bare import: forget what it loaded, so that the ordinary one starts clean."""
    for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
        del sys.modules[name]


_bare = _enter_bare()
try:
    importlib.import_module("pyroute2.netlink.generic.ipvs")  # the deepest of those below
except ImportError:
    if _bare is None:
        raise
    _leave_bare()  # the imports below are then the ordinary ones

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, genlmsg, nla  # noqa: E402
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402
from pyroute2.netlink.generic import GenericNetlinkSocket, ipvs  # noqa: E402

__all__ = ["GenericNetlinkSocket", "NLM_F_ACK", "NLM_F_DUMP", "NLM_F_REQUEST", "NetlinkError",
           "genlmsg", "ipvs", "nla"]
