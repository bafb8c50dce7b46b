"""The launchers in launch/: dry-run command lines, argument checks, and a --run with fakes.

gcloud is not installed here: the dry runs put a `gcloud` on PATH that fails loudly, so they
prove no command is executed; the --run test puts a fake `gcloud` (ssh = `bash -c` in a fake
home, scp = copy) and a fake `uv` on PATH and runs the whole TPU launch twice, so the marker
that skips the one-time setup is exercised for real.
"""

import json
import os
import pathlib
import shlex
import shutil
import stat
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TPU = REPO / "launch" / "tpu_vm.sh"
GPU = REPO / "launch" / "gpu_multihost.sh"
CONFIG = "configs/orl_opqn.py"
ZONE, PROJECT, NAME = "us-central2-b", "my-proj", "dpq-v4"


def _write_exe(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _clean_env(tmp_path, bin_dir=None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "JAX_", "DPQ_JAX_", "PMIX_"))
    }
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir(exist_ok=True)
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def _trap_gcloud(tmp_path) -> pathlib.Path:
    """A `gcloud` that records that it was called and fails: dry runs must never call it."""
    bin_dir = tmp_path / "trap_bin"
    bin_dir.mkdir()
    _write_exe(
        bin_dir / "gcloud",
        f"#!/usr/bin/env bash\ntouch {shlex.quote(str(tmp_path / 'gcloud_called'))}\nexit 99\n",
    )
    return bin_dir


def _run(script, args, env, cwd=REPO):
    return subprocess.run(
        ["bash", str(script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _commands(stdout: str) -> list[list[str]]:
    """The printed command lines ("+ ...") as argument vectors."""
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def _gcloud(cmds, verb):
    return [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", verb]]


def _remote_command(cmd: list[str]) -> str:
    i = cmd.index("--command")
    return cmd[i + 1]


def _tpu_args(*options, train_flags=(), accel="v4-16", workdir="gs://bucket/runs/orl"):
    """launch/tpu_vm.sh OPTIONS CONFIG WORKDIR [-- TRAIN_FLAGS]."""
    args = [f"--name={NAME}", f"--zone={ZONE}", f"--project={PROJECT}"]
    if accel:
        args.append(f"--accelerator-type={accel}")
    args += [*options, CONFIG, workdir]
    return [*args, "--", *train_flags] if train_flags else args


# --- TPU VM launcher: dry run ----------------------------------------------------------------
def test_tpu_dry_run_is_default_and_prints_every_step(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, _tpu_args("--create", train_flags=["--config.total_steps=7"]), env)
    assert res.returncode == 0, res.stderr
    assert "DRY RUN" in res.stdout
    assert not (tmp_path / "gcloud_called").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # nothing staged either
    cmds = _commands(res.stdout)

    (create,) = _gcloud(cmds, "create")
    assert create[5] == NAME
    assert f"--zone={ZONE}" in create and f"--project={PROJECT}" in create
    assert "--accelerator-type=v4-16" in create and "--version=tpu-ubuntu2204-base" in create

    (scp,) = _gcloud(cmds, "scp")
    assert "--recurse" in scp and "--worker=all" in scp
    assert f"--zone={ZONE}" in scp and f"--project={PROJECT}" in scp
    assert f"{NAME}:" in scp  # scp's destination: the home directory on every worker
    src = [a for a in scp[5:] if not a.startswith("--") and a != f"{NAME}:"]
    assert len(src) == 1 and src[0].endswith("/dpq_jax")

    ssh = _gcloud(cmds, "ssh")
    assert len(ssh) == 3  # clear the old copy, setup, run
    for c in ssh:
        assert c[5] == NAME and "--worker=all" in c
        assert f"--zone={ZONE}" in c and f"--project={PROJECT}" in c
    clear, setup, train = (_remote_command(c) for c in ssh)
    assert clear == 'rm -rf "$HOME/dpq_jax"'

    # The setup is guarded by a marker, and installs Python >= 3.11 with uv.
    assert 'm="$HOME/dpq_jax_venv/.dpq_jax_setup_done"' in setup
    assert '[ -f "$m" ]' in setup and "skipped" in setup
    assert "uv python install 3.11" in setup
    assert 'uv venv --python 3.11 "$HOME/dpq_jax_venv"' in setup
    assert '-e "$HOME/dpq_jax" "jax[tpu]"' in setup
    assert 'echo "$want" > "$m"' in setup

    words = shlex.split(train)
    assert words[:3] == ["cd", "$HOME/dpq_jax", "&&"]
    assert words[3:] == [
        "DPQ_JAX_DISTRIBUTED=1",
        "$HOME/dpq_jax_venv/bin/dpq-train",
        f"--config={CONFIG}",
        "--workdir=gs://bucket/runs/orl",
        "--config.total_steps=7",
    ]

    # Order: create, copy (clear + scp), setup, run.
    flat = [" ".join(c) for c in cmds]
    order = [flat.index(" ".join(c)) for c in (create, ssh[0], scp, ssh[1], ssh[2])]
    assert order == sorted(order)


def test_tpu_without_project_and_without_create(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    args = [f"--name={NAME}", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-16"]
    res = _run(TPU, [*args, CONFIG, "gs://b/r"], env)
    assert res.returncode == 0, res.stderr
    cmds = _commands(res.stdout)
    assert _gcloud(cmds, "create") == []
    for c in _gcloud(cmds, "ssh") + _gcloud(cmds, "scp"):
        assert "--zone=us-west4-a" in c
        assert not any(a.startswith("--project") for a in c)


@pytest.mark.parametrize(
    ("accel", "version"),
    [
        ("v6e-8", "v2-alpha-tpuv6e"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v5litepod-8", "v2-alpha-tpuv5-lite"),
        ("v4-8", "tpu-ubuntu2204-base"),
    ],
)
def test_tpu_create_runtime_version_by_type(tmp_path, accel, version):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, _tpu_args("--create", "--spot", accel=accel), env)
    assert res.returncode == 0, res.stderr
    (create,) = _gcloud(_commands(res.stdout), "create")
    assert f"--version={version}" in create and "--spot" in create
    res = _run(TPU, _tpu_args("--create", "--version=my-image", accel=accel), env)
    (create,) = _gcloud(_commands(res.stdout), "create")
    assert "--version=my-image" in create


def test_tpu_git_ref_clones_instead_of_copying(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    url = "https://example.com/me/dpq_jax.git"
    res = _run(TPU, _tpu_args("--git-ref=v1.2", f"--git-url={url}"), env)
    assert res.returncode == 0, res.stderr
    cmds = _commands(res.stdout)
    assert _gcloud(cmds, "scp") == []
    ssh = _gcloud(cmds, "ssh")
    assert len(ssh) == 3 and all("--worker=all" in c for c in ssh)
    clone = _remote_command(ssh[0])
    assert f'git clone --quiet {url} "$HOME/dpq_jax"' in clone
    assert clone.endswith('git -C "$HOME/dpq_jax" checkout --quiet v1.2')


def test_tpu_zone_missing_is_a_one_line_error(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, [f"--name={NAME}", "--accelerator-type=v4-8", CONFIG, "gs://b/r"], env)
    assert res.returncode != 0
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("launch/tpu_vm.sh: error: --zone is required")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--zone=z", CONFIG, "gs://b/r"], "--name is required"),
        ([f"--name={NAME}", "--zone=z", CONFIG], "expected CONFIG WORKDIR"),
        ([f"--name={NAME}", "--zone=z", "--create", CONFIG, "gs://b/r"], "--accelerator-type"),
        ([f"--name={NAME}", "--zone=z", "--python=3.10", CONFIG, "gs://b/r"], "Python >= 3.11"),
        ([f"--name={NAME}", "--zone=z", "configs/nope.py", "gs://b/r"], "not found"),
        ([f"--name={NAME}", "--zone=", CONFIG, "gs://b/r"], "--zone is empty"),
        ([f"--name={NAME}", "--zone=z", "--bogus", CONFIG, "gs://b/r"], "unknown option --bogus"),
    ],
)
def test_tpu_bad_arguments(tmp_path, args, message):
    res = _run(TPU, args, _clean_env(tmp_path, _trap_gcloud(tmp_path)))
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr


@pytest.mark.parametrize("accel", ["v4-16", "v5litepod-16", "v6e-32", ""])
def test_tpu_local_workdir_refused_on_multi_worker_slice(tmp_path, accel):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, _tpu_args(accel=accel, workdir="/home/me/run"), env)
    assert res.returncode == 2
    assert res.stdout == ""
    (line,) = res.stderr.strip().splitlines()
    assert "not gs://" in line and "--allow-local-workdir" in line

    res = _run(TPU, _tpu_args("--allow-local-workdir", accel=accel, workdir="/home/me/run"), env)
    assert res.returncode == 0, res.stderr
    assert "--workdir=/home/me/run" in _remote_command(_gcloud(_commands(res.stdout), "ssh")[-1])


def test_tpu_local_workdir_allowed_on_single_host_with_a_warning(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, _tpu_args(accel="v4-8", workdir="/home/me/run"), env)
    assert res.returncode == 0, res.stderr
    assert "warning" in res.stderr and "use gs://" in res.stderr


def test_tpu_warns_about_a_local_data_dir_on_multi_worker(tmp_path):
    env = _clean_env(tmp_path, _trap_gcloud(tmp_path))
    res = _run(TPU, _tpu_args(train_flags=["--config.input.data_dir=/data/tfds"]), env)
    assert res.returncode == 0
    assert "gs:// data_dir" in res.stderr
    res = _run(TPU, _tpu_args(train_flags=["--config.input.data_dir=gs://b/tfds"]), env)
    assert "data_dir" not in res.stderr


def test_tpu_help():
    res = subprocess.run(["bash", str(TPU), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "DRY RUN IS THE DEFAULT" in res.stdout and "--run" in res.stdout
    for flag in ("--zone", "--project", "--accelerator-type", "--version", "--name", "--reinstall"):
        assert flag in res.stdout


# --- TPU VM launcher: --run against fakes --------------------------------------------------------
_FAKE_GCLOUD = """#!{python}
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["gcloud", *args]) + "\\n")
home = os.environ["FAKE_HOME"]
assert args[:3] == ["compute", "tpus", "tpu-vm"], args
verb = args[3]
if verb == "ssh":
    cmd = args[args.index("--command") + 1]
    sys.exit(subprocess.run(["bash", "-c", cmd], env={{**os.environ, "HOME": home}}).returncode)
if verb == "scp":
    assert "--recurse" in args and "--worker=all" in args, args
    src, dest = [a for a in args[4:] if not a.startswith("--")]
    assert dest.endswith(":"), dest
    shutil.copytree(src, os.path.join(home, os.path.basename(src)))
"""

_FAKE_UV = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps(["uv", *args]) + "\\n")
if args[0] == "venv":
    venv = args[-1]
    os.makedirs(os.path.join(venv, "bin"))
    train = os.path.join(venv, "bin", "dpq-train")
    with open(train, "w") as f:
        f.write(
            "#!{python}\\n"
            "import json, os, sys\\n"
            "with open(os.environ['FAKE_LOG'], 'a') as f:\\n"
            "    f.write(json.dumps(['dpq-train', os.getcwd(),"
            " os.environ.get('DPQ_JAX_DISTRIBUTED'), *sys.argv[1:]]) + '\\\\n')\\n"
        )
    os.chmod(train, 0o755)
"""


def _log(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_tpu_run_copies_sets_up_once_and_trains(tmp_path):
    bin_dir, home = tmp_path / "bin", tmp_path / "worker_home"
    bin_dir.mkdir()
    home.mkdir()
    _write_exe(bin_dir / "gcloud", _FAKE_GCLOUD.format(python=sys.executable))
    _write_exe(bin_dir / "uv", _FAKE_UV.format(python=sys.executable))
    _write_exe(bin_dir / "curl", "#!/bin/sh\necho 'no downloads in tests' >&2\nexit 1\n")
    log = tmp_path / "log.jsonl"
    env = {**_clean_env(tmp_path, bin_dir), "FAKE_LOG": str(log), "FAKE_HOME": str(home)}
    tricky = '--config.note=it\'s a "test" $HOME'
    args = _tpu_args("--run", train_flags=[tricky])

    res = _run(TPU, args, env)
    assert res.returncode == 0, res.stdout + res.stderr
    entries = _log(log)
    uv = [e for e in entries if e[0] == "uv"]
    assert uv[0] == ["uv", "python", "install", "3.11"]
    assert uv[1] == ["uv", "venv", "--python", "3.11", f"{home}/dpq_jax_venv"]
    assert uv[2] == [
        "uv", "pip", "install", "--python", f"{home}/dpq_jax_venv/bin/python",
        "-e", f"{home}/dpq_jax", "jax[tpu]",
    ]  # fmt: skip
    train = [e for e in entries if e[0] == "dpq-train"]
    assert train == [
        [
            "dpq-train",
            f"{home}/dpq_jax",
            "1",
            f"--config={CONFIG}",
            "--workdir=gs://bucket/runs/orl",
            tricky,
        ]
    ]
    # The copy holds the package and configs, not the venv, git metadata or workdirs.
    copy = home / "dpq_jax"
    assert (copy / "setup.cfg").is_file() and (copy / CONFIG).is_file()
    assert (copy / "dpq_jax" / "main.py").is_file() and (copy / "launch" / "tpu_vm.sh").is_file()
    assert not (copy / ".venv").exists() and not (copy / ".git").exists()
    assert (home / "dpq_jax_venv" / ".dpq_jax_setup_done").read_text().startswith("python3.11 ")
    assert list((tmp_path / "tmp").iterdir()) == []  # the local staging copy is removed

    # Second launch: the code is copied again, the setup is skipped.
    (copy / "stale_file").write_text("gone after the next copy")
    res = _run(TPU, args, env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "setup done before" in res.stdout and "skipped" in res.stdout
    entries = _log(log)
    assert len([e for e in entries if e[0] == "uv"]) == 3
    assert len([e for e in entries if e[0] == "dpq-train"]) == 2
    assert not (copy / "stale_file").exists()

    # --reinstall redoes it.
    res = _run(TPU, [*args[:1], "--reinstall", *args[1:]], env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len([e for e in _log(log) if e[0] == "uv"]) == 6


# --- multi-host GPU launcher -----------------------------------------------------------------------
def _env_line(stdout):
    (cmd,) = _commands(stdout)
    assert cmd[0] == "env"
    i = cmd.index("dpq-train")
    return dict(a.split("=", 1) for a in cmd[1:i]), cmd[i:]


def test_gpu_manual_dry_run_sets_jax_variables(tmp_path):
    env = _clean_env(tmp_path)
    args = ["--coordinator=10.0.0.1:1234", "--num-processes=2", "--process-id=1"]
    res = _run(GPU, [*args, CONFIG, "gs://b/run", "--", "--config.total_steps=3"], env)
    assert res.returncode == 0, res.stderr
    assert "DRY RUN" in res.stdout
    assert "JAX reads JAX_COORDINATOR_ADDRESS" in res.stdout
    variables, cmd = _env_line(res.stdout)
    assert variables == {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
        "DPQ_JAX_DISTRIBUTED": "1",
    }
    assert cmd == [
        "dpq-train",
        f"--config={CONFIG}",
        "--workdir=gs://b/run",
        "--config.total_steps=3",
    ]


def test_gpu_manual_reads_the_jax_environment(tmp_path):
    env = {
        **_clean_env(tmp_path),
        "JAX_COORDINATOR_ADDRESS": "host0:4321",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3",
    }
    res = _run(GPU, [CONFIG, "gs://b/run"], env)
    assert res.returncode == 0, res.stderr
    variables, _ = _env_line(res.stdout)
    assert variables["JAX_COORDINATOR_ADDRESS"] == "host0:4321"
    assert variables["JAX_NUM_PROCESSES"] == "4" and variables["JAX_PROCESS_ID"] == "3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--coordinator --num-processes --process-id"),
        (["--coordinator=h:1", "--num-processes=2"], "set --process-id"),
        (["--coordinator=h", "--num-processes=2", "--process-id=0"], "HOST:PORT"),
        (["--coordinator=h:1", "--num-processes=2", "--process-id=2"], "must be <"),
        (["--coordinator=h:1", "--num-processes=0", "--process-id=0"], "positive integer"),
    ],
)
def test_gpu_manual_bad_arguments(tmp_path, args, message):
    res = _run(GPU, [*args, CONFIG, "gs://b/run"], _clean_env(tmp_path))
    assert res.returncode == 2
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr


def test_gpu_slurm_and_mpirun_are_left_to_jax(tmp_path):
    slurm = {
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_NODELIST": "node[01-02]",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "5",
    }
    res = _run(GPU, [CONFIG, "gs://b/run"], {**_clean_env(tmp_path), **slurm})
    assert res.returncode == 0, res.stderr
    assert "SLURM detected" in res.stdout
    variables, _ = _env_line(res.stdout)
    assert variables == {"DPQ_JAX_DISTRIBUTED": "1"}  # JAX reads SLURM_* itself

    ompi = {"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:3000", "OMPI_COMM_WORLD_SIZE": "4"}
    res = _run(GPU, [CONFIG, "gs://b/run"], {**_clean_env(tmp_path), **ompi})
    assert res.returncode == 0, res.stderr
    assert "Open MPI (mpirun) detected" in res.stdout
    variables, _ = _env_line(res.stdout)
    assert variables == {"DPQ_JAX_DISTRIBUTED": "1"}


def test_gpu_run_exports_the_variables(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    out = tmp_path / "seen.json"
    _write_exe(
        bin_dir / "dpq-train",
        f"#!{sys.executable}\nimport json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'env': {{k: v for k, v in os.environ.items()"
        f" if k.startswith(('JAX_', 'DPQ_'))}}}}, open({str(out)!r}, 'w'))\n",
    )
    args = ["--coordinator=10.0.0.1:1234", "--num-processes=2", "--process-id=0", "--run"]
    res = _run(GPU, [*args, CONFIG, "/shared/run"], _clean_env(tmp_path, bin_dir))
    assert res.returncode == 0, res.stderr
    assert "shared directory on every host" in res.stderr  # not gs:// -> a warning only
    seen = json.loads(out.read_text())
    assert seen["argv"] == [f"--config={CONFIG}", "--workdir=/shared/run"]
    assert seen["env"] == {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "0",
        "DPQ_JAX_DISTRIBUTED": "1",
    }


def test_gpu_help():
    res = subprocess.run(["bash", str(GPU), "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    assert "DRY RUN IS THE DEFAULT" in res.stdout and "JAX_COORDINATOR_ADDRESS" in res.stdout


# --- the main entry point reads the variables the GPU launcher documents ---------------------
_PROBE_MAIN = """
import sys
import jax
from absl import flags
from dpq_jax import main

class Stop(Exception):
    pass

def initialize(**kwargs):
    print("initialize", sorted(kwargs.items()))
    raise Stop

jax.distributed.initialize = initialize
flags.FLAGS(["dpq-train", "--config=" + sys.argv[1], "--workdir=" + sys.argv[2]])
try:
    main.main(["dpq-train"])
except Stop:
    pass
"""


def test_main_passes_the_process_variables_to_jax(tmp_path):
    """DPQ_JAX_DISTRIBUTED=1 makes dpq-train call jax.distributed.initialize(), passing on
    JAX_NUM_PROCESSES / JAX_PROCESS_ID (JAX reads neither itself; it reads
    JAX_COORDINATOR_ADDRESS)."""
    env = {
        **_clean_env(tmp_path),
        "DPQ_JAX_DISTRIBUTED": "1",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "1",
        "JAX_PLATFORMS": "cpu",
    }
    config = tmp_path / "tiny_config.py"  # initialize() comes before the config is used
    config.write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    return ml_collections.ConfigDict({'seed': 0})\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", _PROBE_MAIN, str(config), str(tmp_path / "wd")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "initialize [('num_processes', 2), ('process_id', 1)]" in res.stdout


def _jax_distributed_sources() -> list[pathlib.Path]:
    """The installed jax's distributed set-up and its cluster auto-detection."""
    import jax

    src = pathlib.Path(jax.__file__).parent / "_src"
    return [src / "distributed.py", *sorted((src / "clusters").glob("*.py"))]


def test_readme_documents_what_jax_reads():
    """launch/README.md and gpu_multihost.sh say JAX reads JAX_COORDINATOR_ADDRESS but not the
    process count or index; checked against the installed jax's source, so a jax upgrade that
    changes this fails here."""
    import re

    pattern = re.compile(r"""(?:environ(?:\.get)?[(\[]|getenv\()\s*['"](JAX_[A-Z0-9_]+)""")
    texts = [f.read_text() for f in _jax_distributed_sources()]
    reads = {name for text in texts for name in pattern.findall(text)}
    assert "JAX_COORDINATOR_ADDRESS" in reads
    assert not reads & {"JAX_NUM_PROCESSES", "JAX_PROCESS_ID"}  # dpq-train passes these
    readme = (REPO / "launch" / "README.md").read_text()
    assert [name for name in sorted(reads) if f"`{name}`" not in readme] == []
    for name in ("SLURM_PROCID", "OMPI_MCA_orte_hnp_uri"):  # the detection the docs describe
        assert any(name in text for text in texts)


# --- shellcheck -------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_clean():
    scripts = sorted(str(p) for p in (REPO / "launch").glob("*.sh"))
    res = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout
