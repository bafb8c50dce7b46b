"""Command-line entry point: `dpq-train --config=configs/orl_opqn.py --workdir=workdirs/orl`.

Only flags, process set-up and the error boundary live here; the work is
`train.train_and_evaluate` (flax `examples/imagenet/main.py`). Set `DPQ_JAX_DISTRIBUTED=1` on
multi-host slices to call `jax.distributed.initialize()` first.

Exit status:
  0   trained to `total_steps` and wrote the report.
  2   a known problem (bad flag or config, missing file, workdir in use or started with an
      incompatible config, unusable checkpoint, NaN loss): one line `dpq-train: error: ...`
      on stderr naming the problem and the fix (`--verbosity=1` also logs its traceback).
  75  `EX_TEMPFAIL`: stopped by SIGTERM before the last step, after saving a checkpoint;
      rerun the same command to resume.
  1   an unexpected error (its traceback is printed).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

PROG = "dpq-train"
EXIT_ERROR = 2
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: "try again later"

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory, local or gs://bucket/run; a rerun resumes from it."
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a workdir although fields that may change (learning rate, step counts, intervals; "
    "dpq_jax.workdir.COMPATIBLE_FIELDS) differ from its config.json; the changes are logged.",
)
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/orl_opqn.py:bits=32.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def error_line(message: str) -> int:
    """Prints `dpq-train: error: <message>` to stderr (after anything buffered on stdout) and
    returns the exit status of a known problem."""
    sys.stdout.flush()
    sys.stderr.flush()
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_ERROR


def _config_arg(argv: list[str]) -> str | None:
    """The value of the last `--config=X` or `--config X` in `argv`."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _missing_config_file(argv: list[str]) -> str | None:
    """The one-line problem when `--config` names no file, else None."""
    arg = _config_arg(argv)
    if arg is None:
        return None
    path = arg.split(":", 1)[0]
    if os.path.isfile(path):
        return None
    return (
        f"config file {path!r} not found (working directory {os.getcwd()}); pass "
        "--config=<path to a configs/*.py file>, e.g. --config=configs/orl_opqn.py."
    )


def _unknown_field(error: AttributeError, argv: list[str]) -> str:
    """`--config.a.b=v` naming no field: ml_collections' key and "did you mean" line only."""
    inner = error.args[0] if error.args else ""
    text = inner.args[0] if isinstance(inner, KeyError) and inner.args else str(inner)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    key = lines[0].strip("'\"") if lines else "?"
    overrides = [
        a.split("=", 1)[0]
        for a in argv
        if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")
    ]
    where = overrides[0] if overrides else f"--config.{key}"
    hint = lines[1] if len(lines) > 1 else "See the config file for its fields."
    return f"{where}: the config has no field {key!r}. {hint}"


def _flag_problem(error: Exception, argv: list[str]) -> str:
    """One line for an error raised while parsing the flags."""
    missing = _missing_config_file(argv)
    if missing:
        return missing
    if isinstance(error, AttributeError):
        return _unknown_field(error, argv)
    text = str(error)
    if "Error whilst parsing config file" in text:
        # ml_collections appends the config's traceback; its last line is the problem.
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        problem = last.split(": ", 1)[1] if last.split(":", 1)[0].endswith("Error") else last
        return f"--config={_config_arg(argv)}: {problem}"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl's `flags_parser`: a bad flag, config argument or override (an unknown field, a
    value of the wrong type) or a missing config file is one line and exit status 2."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, TypeError, ValueError, OSError) as e:
        sys.exit(error_line(_flag_problem(e, argv)))


def _load_config():
    """The parsed `--config`; a config file that failed to load raises here, in one line."""
    arg = config_flags.get_config_filename(flags.FLAGS["config"])  # may end in ":args"
    missing = _missing_config_file([f"--config={arg}"])
    if missing:
        raise FileNotFoundError(missing)
    path = arg.split(":", 1)[0]
    config = flags.FLAGS.config
    try:
        config.get("method")  # ml_collections defers a load error until first use
    except OSError as e:
        cause = e.__cause__ or e
        lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
        raise ValueError(f"cannot load the config file {path}: {lines[-1] if lines else e}") from e
    return config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    import jax

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO

    if os.environ.get("DPQ_JAX_DISTRIBUTED") == "1":
        # TPU VMs and SLURM are auto-detected; otherwise JAX reads JAX_COORDINATOR_ADDRESS and
        # the process count and index come from these variables.
        kwargs = {}
        if "JAX_NUM_PROCESSES" in os.environ:
            kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
        if "JAX_PROCESS_ID" in os.environ:
            kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
        jax.distributed.initialize(**kwargs)
    return train_command(None, _WORKDIR.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)


def train_command(config, workdir: str, *, allow_config_change: bool = False) -> int:
    """`dpq-train` after its flags: trains, and turns the outcome into an exit status.

    Args:
      config: a training config, or None to load the `--config` flag's.
      workdir: the run's directory.
      allow_config_change: see `train.train_and_evaluate`.

    Returns:
      0 when trained to the end, `EXIT_PREEMPTED` after SIGTERM, `EXIT_ERROR` after a known
      problem (printed as one line on stderr). Other exceptions propagate with their traceback.
    """
    from dpq_jax import train

    # Known problems: the message names the problem and the fix, so a traceback adds nothing
    # (config, workdir and checkpoint errors are ValueErrors). Anything else keeps its traceback.
    known = (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        train.NonFiniteLossError,
    )
    try:
        if config is None:
            config = _load_config()
        result = train.train_and_evaluate(config, workdir, allow_config_change=allow_config_change)
    except known as e:
        logging.debug("Traceback of the error below:", exc_info=True)
        return error_line(str(e) or type(e).__name__)
    if result.stopped_early:
        sys.stdout.flush()
        print(
            f"{PROG}: stopped at step {result.step} of {config.total_steps} (SIGTERM); the "
            "checkpoint is saved. Rerun the same command to resume.",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_PREEMPTED
    return 0


def _log_unraisable(unraisable) -> None:
    # A failed orbax restore leaves tensorstore reads behind whose callbacks raise "Event
    # loop is closed" in other threads and at exit: dozens of tracebacks that would bury the
    # one-line error. They change nothing, so they are only logged (shown by --verbosity=1).
    logging.debug(
        "Ignored exception in %r: %s: %s",
        unraisable.object,
        type(unraisable.exc_value).__name__,
        unraisable.exc_value,
    )


def run():
    """Console-script entry (`dpq-train`)."""
    sys.unraisablehook = _log_unraisable
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
