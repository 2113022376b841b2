#!/bin/bash
# lab-timeout: 600
# table-scale.sh with 1,000 bulk templates: the yardstick its 200,000-template run is held to,
# in the same VM (the tier compares the two MASTER reseed latencies).
export LAB_SCALE_N=1000 LAB_SCALE_KEEPER=0  # the takeover only: the latency to compare
exec bash "$LAB_DIR/scenarios/table-scale.sh"
