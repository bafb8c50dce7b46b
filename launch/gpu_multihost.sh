#!/usr/bin/env bash
# Multi-host GPU: run once per host with the coordinator address, host count and host index:
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 bash launch/gpu_multihost.sh \
#       configs/orl_opqn.py /shared/workdir
# jax.distributed.initialize() reads these through the JAX_COORDINATOR_ADDRESS,
# JAX_NUM_PROCESSES and JAX_PROCESS_ID variables.
set -euo pipefail
config="$1"; workdir="$2"; shift 2
export JAX_COORDINATOR_ADDRESS="${COORDINATOR:?set COORDINATOR=host:port}"
export JAX_NUM_PROCESSES="${NUM_PROCESSES:?set NUM_PROCESSES}"
export JAX_PROCESS_ID="${PROCESS_ID:?set PROCESS_ID}"
DPQ_JAX_DISTRIBUTED=1 exec dpq-train --config="$config" --workdir="$workdir" "$@"
