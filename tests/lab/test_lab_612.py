"""Lab tier, the 6.12 VM: the core set on Debian's 6.12 kernel (EL10's kernel line), issue 16.

The `lab612` fixture (tests/lab/conftest.py) is one runner call with `--kernel 6.12` (one virtual
CPU), in the tier's second lane beside the 6.1 VM of the first (conftest.py). Each scenario is
held to the same checks as on 6.1 (labchecks.py). What differs between the kernels is in
docs/design.md §2 and tests/lab/README.md.
"""

import pytest
from labchecks import (
    check_colocated,
    check_failback3,
    check_seed000,
    check_seed000_hooks_keeps_clients,
    check_smoke,
    check_takeover_hooks,
    show,
)

pytestmark = pytest.mark.lab

TAG = "lab tier 6.12"


def test_612_run_reports_every_scenario(request, lab612):
    s = lab612["summary"]
    assert s["completed"], lab612["output"][-3000:]
    assert [x["name"] for x in s["scenarios"]] == lab612["names"]
    assert lab612["names"][:5] == ["smoke", "seed000-hooks", "takeover-hooks", "failback3",
                                   "colocated"]
    assert lab612["names"][5:] in ([], ["quickstart"])  # when the scenario exists
    assert s["kernel"] == "6.12" and s["slow"] >= 1.0 and s["calib"] is not None, s
    assert "kernel=6.12." in lab612["output"]
    assert lab612["rc"] == 0, lab612["output"][-3000:]


def test_612_smoke_template_in_proc(lab612):
    check_smoke(lab612)


def test_612_seed000_with_hooks(request, lab612):
    check_seed000(request, lab612, "seed000-hooks", True, TAG)
    check_seed000_hooks_keeps_clients(lab612)


def test_612_takeover_tcp_connection_and_fwmark(request, lab612):
    r = check_takeover_hooks(lab612)
    show(request, f"\n[{TAG}] takeover-hooks: TCP connections on their real server "
         f"{r['tcp_same']}/20, fwmark clients {r['fwmark_same']}/20")


def test_612_failback_three_directors_twice_every_client_stays(request, lab612):
    check_failback3(request, lab612, TAG)


def test_612_colocated_no_ping_pong(lab612):
    check_colocated(lab612)
