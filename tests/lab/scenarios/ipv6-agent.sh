#!/bin/bash
# lab-timeout: 300
# ipv6 with the agent and the warm-up gate (LVS_HOOKS_AGENT=1), so one runner call gives both:
# `tests/lab/run ipv6 ipv6-agent`.
export LVS_HOOKS_AGENT=1
exec bash "$LAB_DIR/scenarios/ipv6.sh"
