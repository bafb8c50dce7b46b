#!/usr/bin/env bash
# Multi-host (multi-process) GPU training: run once per process, with the dpq_jax venv active.
#
# DRY RUN IS THE DEFAULT: the command is printed with its environment, nothing is executed.
# Add --run to execute.
#
#   # by hand, one process per host, each seeing all of its host's GPUs:
#   bash launch/gpu_multihost.sh --coordinator=10.0.0.1:1234 --num-processes=2 --process-id=0 \
#       --run configs/orl_opqn.py gs://MY_BUCKET/runs/orl        # on host 0 (10.0.0.1)
#   bash launch/gpu_multihost.sh --coordinator=10.0.0.1:1234 --num-processes=2 --process-id=1 \
#       --run configs/orl_opqn.py gs://MY_BUCKET/runs/orl        # on host 1
#   # SLURM (one task per GPU) or Open MPI's mpirun: nothing to set, both are auto-detected:
#   srun --ntasks-per-node=8 --gpus-per-node=8 bash launch/gpu_multihost.sh --run CONFIG WORKDIR
#   mpirun -np 16 -npernode 8 bash launch/gpu_multihost.sh --run CONFIG WORKDIR
#
# How the distributed set-up is found (jax 0.10, `jax.distributed.initialize()`, which dpq-train
# calls when DPQ_JAX_DISTRIBUTED=1):
#   - JAX itself reads JAX_COORDINATOR_ADDRESS (host:port of process 0) from the environment.
#   - JAX does NOT read the process count and index from the environment: dpq-train reads
#     JAX_NUM_PROCESSES and JAX_PROCESS_ID and passes them to jax.distributed.initialize().
#   - Under SLURM (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID)
#     and Open MPI's mpirun (OMPI_MCA_orte_hnp_uri; Open MPI <= 4) JAX detects all three by
#     itself, and gives each process one GPU (its local rank). Anything set explicitly wins.
set -euo pipefail

prog="launch/gpu_multihost.sh"

usage() {
    cat <<'EOF'
Usage: launch/gpu_multihost.sh [--coordinator=HOST:PORT] [--num-processes=N] [--process-id=I]
                               [--run] CONFIG WORKDIR [-- DPQ_TRAIN_FLAGS...]

Runs `DPQ_JAX_DISTRIBUTED=1 dpq-train --config=CONFIG --workdir=WORKDIR` for one process of a
multi-process JAX job. DRY RUN IS THE DEFAULT: the command is printed, nothing is executed.

  --coordinator=HOST:PORT   process 0's address and a free port, the same on every process
                            (exported as JAX_COORDINATOR_ADDRESS, which JAX reads itself);
                            default: $JAX_COORDINATOR_ADDRESS
  --num-processes=N         number of processes (exported as JAX_NUM_PROCESSES, which dpq-train
                            passes to jax.distributed.initialize); default: $JAX_NUM_PROCESSES,
                            else $OMPI_COMM_WORLD_SIZE
  --process-id=I            this process, 0..N-1 (exported as JAX_PROCESS_ID); default:
                            $JAX_PROCESS_ID, else $OMPI_COMM_WORLD_RANK
  --dry-run                 print the command only (the default)
  --run                     execute it (dpq-train must be on PATH: activate the venv)
  -h, --help                this help

Under SLURM (srun) and Open MPI <= 4 (mpirun) none of the three is needed: JAX's
jax.distributed.initialize() detects the coordinator, process count and index, and gives each
process one GPU. Elsewhere all three are required, and each process sees all of its host's GPUs
(run one process per host). WORKDIR (and any data_dir) must be the same path on every host: a
gs:// bucket or a shared filesystem.
EOF
}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

warn() {
    printf '%s: warning: %s\n' "$prog" "$*" >&2
}

q() {
    local s="$1" safe='^[A-Za-z0-9_@%+=:,./-]+$'
    if [[ -n "$s" && "$s" =~ $safe ]]; then
        printf '%s' "$s"
    else
        printf "'%s'" "${s//\'/\'\\\'\'}"
    fi
}

execute=0
coordinator="${JAX_COORDINATOR_ADDRESS:-}"
num_processes="${JAX_NUM_PROCESSES:-}"
process_id="${JAX_PROCESS_ID:-}"
positional=()
extra=()
while (($#)); do
    arg="$1"
    case "$arg" in
        --*=*) key="${arg%%=*}"; val="${arg#*=}"; has_val=1 ;;
        *) key="$arg"; val=""; has_val=0 ;;
    esac
    case "$key" in
        --coordinator | --num-processes | --process-id)
            if ((has_val)); then
                shift
            else
                (($# >= 2)) || die "$key needs a value"
                val="$2"
                shift 2
            fi
            [[ -n "$val" ]] || die "$key is empty"
            case "$key" in
                --coordinator) coordinator="$val" ;;
                --num-processes) num_processes="$val" ;;
                --process-id) process_id="$val" ;;
            esac
            continue
            ;;
        --dry-run | --run | -h | --help)
            ((!has_val)) || die "$key takes no value"
            ;;
    esac
    case "$arg" in
        --dry-run) execute=0 ;;
        --run) execute=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) positional+=("$arg") ;;
    esac
    shift
done
((${#positional[@]} == 2)) || die "expected CONFIG WORKDIR, got ${#positional[@]} positional argument(s) (see --help)"
config="${positional[0]}"
workdir="${positional[1]}"

if [[ -n "${SLURM_JOB_ID:-}" && -n "${SLURM_STEP_NODELIST:-}" && -n "${SLURM_NTASKS:-}" \
    && -n "${SLURM_PROCID:-}" && -n "${SLURM_LOCALID:-}" ]]; then
    cluster="slurm"
    about="SLURM detected: jax.distributed.initialize() takes the coordinator (first node of SLURM_STEP_NODELIST), process count (SLURM_NTASKS=$SLURM_NTASKS) and index (SLURM_PROCID=$SLURM_PROCID) from SLURM; one GPU per process (SLURM_LOCALID=$SLURM_LOCALID)"
    total="${num_processes:-$SLURM_NTASKS}"
elif [[ -n "${OMPI_MCA_orte_hnp_uri:-}" ]]; then
    cluster="ompi"
    about="Open MPI (mpirun) detected: jax.distributed.initialize() takes the coordinator (OMPI_MCA_orte_hnp_uri), process count (OMPI_COMM_WORLD_SIZE) and index (OMPI_COMM_WORLD_RANK) from Open MPI; one GPU per process (OMPI_COMM_WORLD_LOCAL_RANK)"
    total="${num_processes:-${OMPI_COMM_WORLD_SIZE:-?}}"
else
    cluster="manual"
    # Open MPI 5 (no OMPI_MCA_orte_hnp_uri): its rank and size still serve, the address does not.
    num_processes="${num_processes:-${OMPI_COMM_WORLD_SIZE:-}}"
    process_id="${process_id:-${OMPI_COMM_WORLD_RANK:-}}"
    missing=()
    [[ -n "$coordinator" ]] || missing+=(--coordinator)
    [[ -n "$num_processes" ]] || missing+=(--num-processes)
    [[ -n "$process_id" ]] || missing+=(--process-id)
    ((${#missing[@]} == 0)) \
        || die "no SLURM or Open MPI (mpirun) environment detected: set ${missing[*]} (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)"
    about="no cluster manager detected: JAX reads JAX_COORDINATOR_ADDRESS; dpq-train passes JAX_NUM_PROCESSES and JAX_PROCESS_ID to jax.distributed.initialize(); this process sees all local GPUs"
    total="$num_processes"
fi

if [[ -n "$coordinator" && ! "$coordinator" =~ ^[^[:space:]]+:[0-9]+$ ]]; then
    die "--coordinator=$coordinator: expected HOST:PORT, e.g. 10.0.0.1:1234"
fi
if [[ -n "$num_processes" ]]; then
    if ! [[ "$num_processes" =~ ^[0-9]+$ ]] || ((num_processes < 1)); then
        die "--num-processes=$num_processes: expected a positive integer"
    fi
fi
if [[ -n "$process_id" ]]; then
    [[ "$process_id" =~ ^[0-9]+$ ]] || die "--process-id=$process_id: expected an integer >= 0"
    if [[ -n "$num_processes" ]] && ((process_id >= num_processes)); then
        die "--process-id=$process_id must be < --num-processes=$num_processes"
    fi
fi
if [[ "$coordinator" =~ ^(localhost|127\.[0-9.]+):  && "$total" != 1 ]]; then
    warn "coordinator $coordinator is only reachable when every process runs on this host"
fi
if [[ "$workdir" != gs://* && "$total" != 1 ]]; then
    warn "WORKDIR $workdir must be the same shared directory on every host (a gs:// bucket or a shared filesystem)"
fi

envs=()
[[ -z "$coordinator" ]] || envs+=("JAX_COORDINATOR_ADDRESS=$coordinator")
[[ -z "$num_processes" ]] || envs+=("JAX_NUM_PROCESSES=$num_processes")
[[ -z "$process_id" ]] || envs+=("JAX_PROCESS_ID=$process_id")
envs+=(DPQ_JAX_DISTRIBUTED=1)
cmd=(dpq-train "--config=$config" "--workdir=$workdir" ${extra[@]+"${extra[@]}"})

if ((execute)); then
    command -v dpq-train >/dev/null 2>&1 || die "dpq-train not found: activate the dpq_jax venv"
    printf '# dpq_jax multi-host GPU (%s): %s\n' "$cluster" "$about"
else
    printf '# dpq_jax multi-host GPU (DRY RUN: nothing is executed; add --run) (%s): %s\n' "$cluster" "$about"
fi
line="+ env"
for a in "${envs[@]}" "${cmd[@]}"; do line+=" $(q "$a")"; done
printf '%s\n' "$line"
if ((execute)); then
    exec env "${envs[@]}" "${cmd[@]}"
fi
