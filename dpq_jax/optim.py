"""optax recipes from the config (`config.optim`).

The OPQN recipe (METHODS §1.3) is SGD with momentum 0.9, L2 weight decay 5e-4 added to the
gradient (as PyTorch's `weight_decay` does), learning rate 0.1 halved every 35 epochs. Other
methods use Adam or AdamW; `decoupled_weight_decay` switches between L2 and decoupled decay.
"""

import ml_collections
import optax
from flax import nnx

_SCHEDULES = ("constant", "step", "exponential", "cosine")


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The learning-rate schedule: constant, step (×decay_rate every decay_steps, staircase),
    exponential (smooth), or cosine to zero; optional linear warmup."""
    name = cfg.get("schedule", "constant")
    lr = cfg.lr
    if name == "constant":
        schedule = optax.constant_schedule(lr)
    elif name in ("step", "exponential"):
        schedule = optax.exponential_decay(
            lr,
            transition_steps=max(1, cfg.decay_steps),
            decay_rate=cfg.decay_rate,
            staircase=name == "step",
        )
    elif name == "cosine":
        schedule = optax.cosine_decay_schedule(lr, decay_steps=max(1, total_steps))
    else:
        raise ValueError(f"Unknown optim.schedule {name!r}; choose one of {_SCHEDULES}.")
    warmup = cfg.get("warmup_steps", 0)
    if warmup:
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, warmup), schedule], boundaries=[warmup]
        )
    return schedule


def make_optimizer(
    cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optax chain `clip -> (L2 decay) -> optimizer(schedule)` from `config.optim`.

    Returns:
      `(tx, schedule)`; the schedule is returned so the trainer can log the learning rate.
    """
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.get("grad_clip_norm", 0.0):
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    weight_decay = cfg.get("weight_decay", 0.0)
    decoupled = cfg.get("decoupled_weight_decay", False)
    if weight_decay and not decoupled:
        parts.append(optax.add_decayed_weights(weight_decay))
    name = cfg.name
    if name == "sgd":
        parts.append(
            optax.sgd(
                schedule,
                momentum=cfg.get("momentum", 0.9) or None,
                nesterov=cfg.get("nesterov", False),
            )
        )
    elif name == "adam":
        parts.append(optax.adam(schedule))
    elif name == "amsgrad":  # DCDH's optimizer (PyTorch Adam(amsgrad=True))
        parts.append(optax.amsgrad(schedule))
    elif name == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=weight_decay if decoupled else 0.0))
    else:
        raise ValueError(
            f"Unknown optim.name {name!r}; choose one of ('sgd', 'adam', 'amsgrad', 'adamw')."
        )
    return optax.chain(*parts), schedule


def make_nnx_optimizer(
    model: nnx.Module, cfg: ml_collections.ConfigDict, total_steps: int
) -> tuple[nnx.Optimizer, optax.Schedule]:
    """The `nnx.Optimizer` of `model`'s `nnx.Param`s with the `make_optimizer` chain.

    The trainer and `inference.restore_model` both build it this way, so the restored tree
    matches the saved `(model, optimizer)` state.

    Returns:
      `(optimizer, schedule)`.
    """
    tx, schedule = make_optimizer(cfg, total_steps)
    return nnx.Optimizer(model, tx, wrt=nnx.Param), schedule
