"""NumPy twins of PyTorch's Xavier initialisation, the oracle for the OPQN initialisers.

`torch.nn.init.xavier_uniform_(tensor, gain)` draws from U(-a, a) with
`a = gain * sqrt(6 / (fan_in + fan_out))`, where `_calculate_fan_in_and_fan_out` reads the
fans off the tensor's shape: `fan_in = size(1) * receptive`, `fan_out = size(0) * receptive`,
`receptive = prod(size[2:])` (1 for a 2-D `[out, in]` matrix). Written out in plain Python so
the tests check `dpq_jax.quantizers.opqn.torch_xavier_uniform` against torch's rule, not
against JAX's.

Example:
  >>> torch_fan_in_and_fan_out((8, 64, 64))  # OPQN's A at 48 bits: [M, d, K]
  (4096, 512)
"""

import math


def torch_fan_in_and_fan_out(shape) -> tuple[int, int]:
    """`torch.nn.init._calculate_fan_in_and_fan_out` on a tensor of `shape`.

    Raises:
      ValueError: fewer than 2 dimensions (torch refuses them too).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a tensor of at least 2 dimensions, got shape {shape}.")
    receptive = 1
    for size in shape[2:]:
        receptive *= size
    return shape[1] * receptive, shape[0] * receptive


def torch_xavier_uniform_bound(shape, gain: float = 1.0) -> float:
    """The bound `a` of `torch.nn.init.xavier_uniform_` on a tensor of `shape`.

    Example:
      >>> round(torch_xavier_uniform_bound((2, 3)), 6)  # sqrt(6 / (3 + 2))
      1.095445
    """
    fan_in, fan_out = torch_fan_in_and_fan_out(shape)
    return gain * math.sqrt(6.0 / (fan_in + fan_out))
