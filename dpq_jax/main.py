"""Command-line entry point: `dpq-train --config=configs/orl_opqn.py --workdir=workdirs/orl`.

Only flags and process set-up live here; the work is `train.train_and_evaluate` (flax
`examples/imagenet/main.py`). Set `DPQ_JAX_DISTRIBUTED=1` on multi-host slices to call
`jax.distributed.initialize()` first.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory; a rerun resumes from it.")
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. configs/orl_opqn.py:bits=32.", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


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
    from dpq_jax import train

    result = train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)
    if result.stopped_early:
        logging.warning("Stopped at step %d; rerun the same command to resume.", result.step)


def run():
    """Console-script entry (`dpq-train`)."""
    app.run(main)


if __name__ == "__main__":
    run()
