"""Slow, obviously-correct NumPy twin of `dpq_jax.losses.opqn_progressive` (test oracle only).

Float64 loops over the prefixes, built on the CosFace and entropy twins of `losses/reference.py`.
"""

import numpy as np

from dpq_jax.losses import reference as ref


def prefix_margin_loss(
    feats_sub, soft_prefixes, probs, weights, labels, *, scale, margin, entropy_weight
) -> dict:
    """dict(total, raw, prefixes [L], entropy): `1/2 (raw + mean_l prefixes[l]) + mu entropy`,
    entropy the mean over levels of each level's mean assignment entropy."""
    soft_prefixes = np.asarray(soft_prefixes, np.float64)
    probs = np.asarray(probs, np.float64)
    levels = soft_prefixes.shape[1]
    raw = ref.subspace_cosface(feats_sub, weights, labels, scale=scale, margin=margin)
    prefixes = [
        ref.subspace_cosface(soft_prefixes[:, level], weights, labels, scale=scale, margin=margin)
        for level in range(levels)
    ]
    entropy = sum(ref.assignment_entropy(probs[:, level]) for level in range(levels)) / levels
    total = 0.5 * (raw + sum(prefixes) / levels) + entropy_weight * entropy
    return dict(total=total, raw=raw, prefixes=np.array(prefixes), entropy=entropy)
