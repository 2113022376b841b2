#!/bin/bash
# lab-timeout: 300
# takeover with lvs-hooks wired into keepalived on both directors (LVS_HOOKS=1), so one runner
# call gives the before/after pair: `tests/lab/run takeover takeover-hooks`.
export LVS_HOOKS=1
export LVS_HOOKS_MODE=${LVS_HOOKS_MODE:-fifo}
exec bash "$LAB_DIR/scenarios/takeover.sh"
