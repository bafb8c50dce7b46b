#!/usr/bin/env bash
# Run on every worker of a Cloud TPU VM slice (multi-host):
#   gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE --worker=all \
#     --command "cd dpq_jax && bash launch/tpu_vm.sh configs/orl_opqn.py gs://BUCKET/workdir"
# Each host installs the package, then all hosts run the same command; jax.distributed
# discovers the slice by itself on TPU VMs. The workdir must be shared (a GCS bucket).
set -euo pipefail
config="$1"; workdir="$2"; shift 2
python3 -m venv "$HOME/dpq_venv"
. "$HOME/dpq_venv/bin/activate"
pip install -q -U pip
pip install -q -e . "jax[tpu]"
DPQ_JAX_DISTRIBUTED=1 exec dpq-train --config="$config" --workdir="$workdir" "$@"
