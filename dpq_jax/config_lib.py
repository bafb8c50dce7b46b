"""Helpers shared by the experiment files in `configs/` (they import from here, not from each
other, so a config loads from any working directory and after installation).

After big_vision `configs/common.py` (`parse_arg`) and flax `examples/*/configs`.
"""

import importlib.util
import os

import ml_collections


def parse_arg(arg: str | None, lazy: bool = False, **spec) -> ml_collections.ConfigDict:
    """Parses a `--config=file.py:ARG` string such as `"bits=32,protocol=orl_unseen,runlocal"`.

    Args:
      arg: comma-separated `key=value` pairs or bare `key` (meaning True); may be None or "".
      lazy: allow keys that `spec` does not name (kept as strings).
      **spec: `key=default` or `key=(default, type)`; bare keys must be booleans.

    Returns:
      A ConfigDict with every key of `spec`, converted to the type of its default.

    Raises:
      ValueError: an unknown key, or a value that does not convert.

    Example:
      >>> parse_arg("bits=24,runlocal", bits=32, runlocal=False).bits
      24
    """
    parsed = ml_collections.ConfigDict()
    types = {}
    for key, default in spec.items():
        if isinstance(default, tuple) and len(default) == 2 and isinstance(default[1], type):
            default, types[key] = default
        else:
            types[key] = type(default)
        parsed[key] = default
    for item in filter(None, (arg or "").split(",")):
        key, eq, value = item.partition("=")
        key = key.strip()
        if key not in types and not lazy:
            raise ValueError(f"Unknown config argument {key!r}; this config takes {sorted(types)}.")
        kind = types.get(key, str)
        if not eq:
            if kind is not bool:
                raise ValueError(f"Config argument {key!r} needs a value: {key}=...")
            parsed[key] = True
        elif kind is bool:
            parsed[key] = value.strip().lower() in ("1", "true", "yes", "y")
        else:
            try:
                parsed[key] = kind(value.strip())
            except ValueError as e:
                raise ValueError(
                    f"Config argument {key}={value!r} is not a {kind.__name__}."
                ) from e
    return parsed


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file path (for tests and notebooks)."""
    spec = importlib.util.spec_from_file_location(
        "dpq_config_" + os.path.basename(path).removesuffix(".py"), path
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


# OPQN code lengths with K = 256 codewords per book and D = M·K (so d = K: every codebook is
# a full orthonormal basis of its subspace; the 112×112 regime of OPQN, METHODS §1.1).
OPQN_BITS_TO_MK = {16: (2, 256), 24: (3, 256), 32: (4, 256), 48: (6, 256), 64: (8, 256)}


def opqn_shape(bits: int) -> tuple[int, int]:
    """(M, K) for an OPQN code of `bits` bits with K = 256."""
    if bits not in OPQN_BITS_TO_MK:
        raise ValueError(f"bits={bits} not supported; choose one of {sorted(OPQN_BITS_TO_MK)}.")
    return OPQN_BITS_TO_MK[bits]


def retrieval_eval(
    query: str,
    database: str,
    *,
    log_steps: int,
    final: bool,
    precision_ks: tuple[int, ...] = (5,),
    map_ks: tuple[int, ...] = (-1,),
    query_side: str = "soft_quantized",
) -> ml_collections.ConfigDict:
    """A `config.evals.<name>` entry for the retrieval evaluator (ADC search + metrics).

    Args:
      query, database: split names of the protocol (e.g. "val_query", "val_database").
      log_steps: run every this many steps; 0 runs it only for the final report.
      final: run it on the selected checkpoint for the report.
      precision_ks: cut-offs for precision@K.
      map_ks: cut-offs for mAP; -1 means the whole database.
      query_side: "soft_quantized" (OPQN probability LUT), "raw" (inner product) or "l2".
    """
    cfg = ml_collections.ConfigDict()
    cfg.type = "retrieval"
    cfg.query = query
    cfg.database = database
    cfg.query_side = query_side
    cfg.map_ks = tuple(map_ks)
    cfg.precision_ks = tuple(precision_ks)
    cfg.denominator = "relevant_in_topk"  # equals min_relevant_k for K = all
    cfg.empty = "zero"  # queries without a relevant item count as AP 0
    cfg.ties = "stable"  # tied scores ranked by database index
    cfg.log_steps = log_steps
    cfg.final = final
    return cfg
