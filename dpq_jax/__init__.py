"""dpq_jax: product quantization and deep hashing for image retrieval in JAX/Flax.

Importing the package touches no device, so tests can set the fake CPU device count first.
"""

__version__ = "0.1.0"
