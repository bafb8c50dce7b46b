#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (one or many workers), in the manner of big_vision:
#   [create the TPU VM] -> copy this checkout to every worker -> one-time setup of Python >= 3.11
#   and a venv (skipped on later launches) -> run dpq-train on every worker (--worker=all).
#
# DRY RUN IS THE DEFAULT: every command is printed and nothing is executed. Add --run to execute.
#
#   bash launch/tpu_vm.sh --name=dpq-v4 --zone=us-central2-b --accelerator-type=v4-16 --create \
#       configs/orl_opqn.py gs://MY_BUCKET/runs/orl_opqn           # prints the commands
#   bash launch/tpu_vm.sh --name=dpq-v4 --zone=us-central2-b --accelerator-type=v4-16 --run \
#       configs/orl_opqn.py gs://MY_BUCKET/runs/orl_opqn           # runs them (needs gcloud)
#
# Run `bash launch/tpu_vm.sh --help` for all flags; zones per TPU type are in launch/README.md.
set -euo pipefail

prog="launch/tpu_vm.sh"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
remote_dir="dpq_jax"          # the checkout on each worker: $HOME/dpq_jax
remote_venv="dpq_jax_venv"    # the venv on each worker: $HOME/dpq_jax_venv (outside the checkout)
marker=".dpq_jax_setup_done"  # in the venv; holds the Python version and a hash of the deps

usage() {
    cat <<'EOF'
Usage: launch/tpu_vm.sh --name=TPU --zone=ZONE [options] CONFIG WORKDIR [-- DPQ_TRAIN_FLAGS...]

Runs `dpq-train --config=CONFIG --workdir=WORKDIR` on every worker of a Cloud TPU VM slice:
  1. (--create) gcloud compute tpus tpu-vm create
  2. copy this checkout (git-tracked and untracked, not ignored, files) to $HOME/dpq_jax on
     every worker with `gcloud compute tpus tpu-vm scp --recurse ... --worker=all`,
     or, with --git-ref, `git clone` + `git checkout REF` on every worker
  3. one-time setup on every worker: uv, Python >= 3.11 (`uv python install`), a venv in
     $HOME/dpq_jax_venv with dpq_jax (editable) and jax[tpu]. A marker file in the venv makes
     later launches skip this step unless --reinstall is given or setup.cfg/pyproject.toml
     changed.
  4. gcloud compute tpus tpu-vm ssh TPU --worker=all --command "... dpq-train ..."

DRY RUN IS THE DEFAULT: the commands are printed, nothing is executed (gcloud is not needed).

Required:
  --name=TPU                 TPU VM name
  --zone=ZONE                e.g. us-central2-b (v4), us-west4-a (v5e); see launch/README.md or
                             `gcloud compute tpus accelerator-types list --zone=ZONE`
  CONFIG                     config path relative to the checkout, e.g. configs/orl_opqn.py[:ARGS]
  WORKDIR                    gs://BUCKET/PATH; every worker writes checkpoints there, and a rerun
                             of the same command resumes from it

Options:
  --project=PROJECT          GCP project (default: gcloud's configured project)
  --accelerator-type=TYPE    e.g. v4-8, v4-16, v5litepod-8, v5p-8, v6e-8. Needed with --create;
                             also tells single-host slices (local workdir allowed) from
                             multi-worker ones. Unknown or unset: treated as multi-worker.
  --version=RUNTIME          TPU VM software version for --create (default by type:
                             v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5litepod
                             v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base)
  --create                   create the TPU VM first
  --spot                     with --create: a Spot VM (preemptible; relaunch to resume)
  --git-ref=REF              clone REF on the workers instead of copying this checkout
  --git-url=URL              repository to clone (default: this checkout's `origin` remote)
  --python=VERSION           Python for the venv (default 3.11; must be >= 3.11)
  --reinstall                redo the setup step even if its marker is present
  --allow-local-workdir      allow a non-gs:// WORKDIR on a multi-worker slice (each worker would
                             write to its own disk: checkpoints are incomplete; not resumable)
  --dry-run                  print the commands only (the default)
  --run                      execute the commands
  -h, --help                 this help

Every user path must be a gs:// path on a multi-worker slice: WORKDIR and, for TFDS-built
datasets, --config.input.data_dir (pass it after `--`). The workers share nothing else.
EOF
}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 2
}

warn() {
    printf '%s: warning: %s\n' "$prog" "$*" >&2
}

# Shell-quotes one word for printing and for remote command strings.
q() {
    local s="$1" safe='^[A-Za-z0-9_@%+=:,./-]+$'
    if [[ -n "$s" && "$s" =~ $safe ]]; then
        printf '%s' "$s"
    else
        printf "'%s'" "${s//\'/\'\\\'\'}"
    fi
}

execute=0
# Prints a command (argument vector) and runs it with --run.
run() {
    local line="+" a
    for a in "$@"; do line+=" $(q "$a")"; done
    printf '%s\n' "$line"
    if ((execute)); then "$@"; fi
}

# Prints a local shell command line (pipelines) and runs it with --run.
run_sh() {
    printf '+ %s\n' "$1"
    if ((execute)); then eval "$1"; fi
}

# --- arguments -------------------------------------------------------------------------------
name="" zone="" project="" accel="" version="" git_ref="" git_url="" python_version="3.11"
create=0 spot=0 reinstall=0 allow_local=0
positional=()
extra=()
while (($#)); do
    arg="$1"
    case "$arg" in
        --*=*) key="${arg%%=*}"; val="${arg#*=}"; has_val=1 ;;
        *) key="$arg"; val=""; has_val=0 ;;
    esac
    case "$key" in
        --name | --zone | --project | --accelerator-type | --version | --git-ref | --git-url | --python)
            if ((has_val)); then
                shift
            else
                (($# >= 2)) || die "$key needs a value"
                val="$2"
                shift 2
            fi
            [[ -n "$val" ]] || die "$key is empty"
            case "$key" in
                --name) name="$val" ;;
                --zone) zone="$val" ;;
                --project) project="$val" ;;
                --accelerator-type) accel="$val" ;;
                --version) version="$val" ;;
                --git-ref) git_ref="$val" ;;
                --git-url) git_url="$val" ;;
                --python) python_version="$val" ;;
            esac
            continue
            ;;
        --create | --spot | --reinstall | --allow-local-workdir | --dry-run | --run | -h | --help)
            ((!has_val)) || die "$key takes no value"
            ;;
    esac
    case "$arg" in
        --create) create=1 ;;
        --spot) spot=1 ;;
        --reinstall) reinstall=1 ;;
        --allow-local-workdir) allow_local=1 ;;
        --dry-run) execute=0 ;;
        --run) execute=1 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        -*) die "unknown option $arg (see --help)" ;;
        *) positional+=("$arg") ;;
    esac
    shift
done

[[ -n "$name" ]] || die "--name is required (the TPU VM name)"
[[ -n "$zone" ]] || die "--zone is required, e.g. --zone=us-central2-b for v4 (zones per TPU type: launch/README.md)"
((${#positional[@]} == 2)) || die "expected CONFIG WORKDIR, got ${#positional[@]} positional argument(s) (see --help)"
config="${positional[0]}"
workdir="${positional[1]}"
if ! [[ "$python_version" =~ ^3\.([0-9]+)(\.[0-9]+)?$ ]] || ((BASH_REMATCH[1] < 11)); then
    die "--python=$python_version: dpq_jax needs Python >= 3.11"
fi
((!spot || create)) || die "--spot only applies with --create"
if ((create)) && [[ -z "$accel" ]]; then
    die "--create needs --accelerator-type, e.g. --accelerator-type=v4-8"
fi
[[ -z "$git_url" || -n "$git_ref" ]] || die "--git-url needs --git-ref"

# Single-host slices: one worker. Everything else (or an unknown type) has several workers.
case "$accel" in
    v2-8 | v3-8 | v4-8 | v5p-8 | v5litepod-1 | v5litepod-4 | v5litepod-8 | v6e-1 | v6e-4 | v6e-8)
        multi_worker=0 ;;
    *) multi_worker=1 ;;
esac
slice="${accel:-unknown type, assumed multi-worker}"

if [[ "$workdir" != gs://* ]]; then
    if ((multi_worker && !allow_local)); then
        die "WORKDIR $workdir is not gs:// and the slice is multi-worker ($slice): use a shared gs:// workdir (or --allow-local-workdir)"
    fi
    warn "WORKDIR $workdir is on the worker's own disk: it is lost with the TPU VM; use gs://"
fi
for a in ${extra[@]+"${extra[@]}"}; do
    if [[ "$a" == *data_dir=* && "${a#*data_dir=}" != gs://* ]] && ((multi_worker)); then
        warn "$a: on a multi-worker slice every worker must read the same data: use a gs:// data_dir"
    fi
done

if [[ -z "$git_ref" ]]; then
    config_file="${config%%:*}"
    [[ "$config_file" != /* ]] || die "CONFIG must be relative to the checkout (e.g. configs/orl_opqn.py), not $config_file"
    [[ -f "$repo/$config_file" ]] || die "CONFIG $config_file not found in $repo"
fi

if [[ -z "$version" ]]; then
    case "$accel" in
        v6e-*) version="v2-alpha-tpuv6e" ;;
        v5p-*) version="v2-alpha-tpuv5" ;;
        v5litepod-*) version="v2-alpha-tpuv5-lite" ;;
        *) version="tpu-ubuntu2204-base" ;;
    esac
fi

gflags=(--zone="$zone")
[[ -z "$project" ]] || gflags+=(--project="$project")
tpu_ssh=(gcloud compute tpus tpu-vm ssh "$name" "${gflags[@]}" --worker=all --command)

if ((execute)); then
    command -v gcloud >/dev/null 2>&1 || die "gcloud not found (install the Google Cloud CLI)"
    printf '# dpq_jax TPU launch: %s, zone %s, slice %s\n' "$name" "$zone" "$slice"
else
    printf '# dpq_jax TPU launch (DRY RUN: nothing is executed; add --run): %s, zone %s, slice %s\n' \
        "$name" "$zone" "$slice"
fi

# --- 1. create ---------------------------------------------------------------------------------
if ((create)); then
    printf '# 1. create the TPU VM\n'
    create_cmd=(gcloud compute tpus tpu-vm create "$name" "${gflags[@]}"
        --accelerator-type="$accel" --version="$version")
    ((!spot)) || create_cmd+=(--spot)
    run "${create_cmd[@]}"
fi

# --- 2. code -----------------------------------------------------------------------------------
if [[ -n "$git_ref" ]]; then
    if [[ -z "$git_url" ]]; then
        git_url="$(git -C "$repo" remote get-url origin 2>/dev/null)" \
            || die "--git-ref needs --git-url (this checkout has no 'origin' remote)"
    fi
    printf '# 2. check out %s on every worker\n' "$git_ref"
    run "${tpu_ssh[@]}" "rm -rf \"\$HOME/$remote_dir\" && git clone --quiet $(q "$git_url") \"\$HOME/$remote_dir\" && git -C \"\$HOME/$remote_dir\" checkout --quiet $(q "$git_ref")"
else
    stage_root="${TMPDIR:-/tmp}/dpq_jax_stage.$$"
    stage="$stage_root/$remote_dir"
    if ((execute)); then trap 'rm -rf "$stage_root"' EXIT; fi
    printf '# 2. copy this checkout to %s on every worker\n' "\$HOME/$remote_dir"
    run_sh "rm -rf $(q "$stage_root") && mkdir -p $(q "$stage")"
    if git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # Tracked and untracked files that git does not ignore (no .venv, workdirs, .git).
        run_sh "git -C $(q "$repo") ls-files -z --cached --others --exclude-standard | (cd $(q "$repo") && while IFS= read -r -d '' f; do if [ -e \"\$f\" ]; then printf '%s\\0' \"\$f\"; fi; done | tar --null -T - -cf -) | tar -C $(q "$stage") -xf -"
    else
        run_sh "tar -C $(q "$repo") --exclude=.git --exclude=.venv --exclude=.venv-ci --exclude=workdirs --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C $(q "$stage") -xf -"
    fi
    run "${tpu_ssh[@]}" "rm -rf \"\$HOME/$remote_dir\""
    run gcloud compute tpus tpu-vm scp --recurse "$stage" "$name:" "${gflags[@]}" --worker=all
    run_sh "rm -rf $(q "$stage_root")"
fi

# --- 3. one-time setup ----------------------------------------------------------------------------
printf '# 3. one-time setup on every worker (skipped while the marker matches; --reinstall redoes it)\n'
code="\$HOME/$remote_dir"
venv="\$HOME/$remote_venv"
setup="m=\"$venv/$marker\"; want=\"python$python_version \$(cat \"$code/setup.cfg\" \"$code/pyproject.toml\" | sha256sum | cut -d \" \" -f 1)\"; "
setup+="if [ $reinstall = 0 ] && [ -f \"\$m\" ] && [ \"\$(cat \"\$m\")\" = \"\$want\" ]; then echo \"dpq_jax: setup done before (\$m), skipped\"; "
setup+="else ( set -eo pipefail; export PATH=\"\$HOME/.local/bin:\$PATH\"; "
setup+="command -v uv >/dev/null 2>&1 || curl -LsSf https://astral.sh/uv/install.sh | sh; "
setup+="uv python install $python_version; rm -rf \"$venv\"; uv venv --python $python_version \"$venv\"; "
setup+="uv pip install --python \"$venv/bin/python\" -e \"$code\" \"jax[tpu]\"; "
setup+="echo \"\$want\" > \"\$m\" ); fi"
run "${tpu_ssh[@]}" "$setup"

# --- 4. run ----------------------------------------------------------------------------------
printf '# 4. train on every worker; rerun this command to resume from the workdir\n'
train="cd \"$code\" && DPQ_JAX_DISTRIBUTED=1 \"$venv/bin/dpq-train\" $(q "--config=$config") $(q "--workdir=$workdir")"
for a in ${extra[@]+"${extra[@]}"}; do train+=" $(q "$a")"; done
run "${tpu_ssh[@]}" "$train"
