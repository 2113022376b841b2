"""kernel/pyroute2_netlink.py: pyroute2's generic netlink without the rest of the library, and the
whole library still there for whoever asks for it. Each case in a fresh interpreter: what it
checks is what an import leaves in sys.modules."""

import json
import os
import subprocess
import sys
import textwrap

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(code, pythonpath=()):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*pythonpath, PROJECT]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def test_the_ipvs_layer_loads_pyroute2s_netlink_only():
    r = run("""
        import json, sys
        import lvs_hooks.kernel.netlink
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")))
    """)
    assert "pyroute2.netlink.generic.ipvs" in r
    # what the package's __init__ would have brought: IPRoute, NDB, IPDB, conntrack
    assert not [m for m in r if m.startswith(("pyroute2.iproute", "pyroute2.ndb",
                                              "pyroute2.ipdb", "pyroute2.conntrack"))]
    assert len(r) < 40


def test_the_whole_library_is_there_for_whoever_asks():
    r = run("""
        import json, sys
        import lvs_hooks.kernel.netlink
        from pyroute2 import IPRoute            # doctor.py, rules/peers.py
        import pyroute2
        print(json.dumps([IPRoute.__name__, pyroute2.NDB.__name__, pyroute2.__version__,
                          pyroute2.netlink.generic.ipvs.__name__,
                          "pyroute2.ndb.main" in sys.modules]))
    """)
    assert r[:2] == ["IPRoute", "NDB"] and r[2] not in ("", "unknown")
    assert r[3:] == ["pyroute2.netlink.generic.ipvs", True]


def test_a_pyroute2_imported_before_is_left_as_it_is():
    r = run("""
        import json, sys
        import pyroute2
        whole = sys.modules["pyroute2"]
        from lvs_hooks.kernel import pyroute2_netlink
        print(json.dumps([sys.modules["pyroute2"] is whole, pyroute2_netlink._bare is None]))
    """)
    assert r == [True, True]


FAKE_INIT = '''
# a release whose submodules exist only once the package's __init__ has run (as pyroute2 0.6's
# did, from its pr2modules)
import sys, types
def _mod(name, **attrs):
    m = types.ModuleType(name)
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m
class _Msg:
    pass
_mod("pyroute2.netlink", NLM_F_ACK=4, NLM_F_DUMP=0x300, NLM_F_REQUEST=1, genlmsg=_Msg, nla=_Msg)
_mod("pyroute2.netlink.exceptions", NetlinkError=type("NetlinkError", (Exception,), {}))
_mod("pyroute2.netlink.generic", GenericNetlinkSocket=object)
_mod("pyroute2.netlink.generic.ipvs", FROM="the fake's __init__")
INIT_RAN = True
'''


def test_a_release_that_needs_its_init_gets_the_ordinary_import(tmp_path):
    pkg = tmp_path / "pyroute2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(FAKE_INIT)
    r = run("""
        import json, sys
        from lvs_hooks.kernel import pyroute2_netlink as p
        print(json.dumps([p.ipvs.FROM, sys.modules["pyroute2"].INIT_RAN, p.NLM_F_ACK]))
    """, pythonpath=[str(tmp_path)])
    assert r == ["the fake's __init__", True, 4]
