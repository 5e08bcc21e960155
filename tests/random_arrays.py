"""Random test inputs drawn with numpy and put on the device. An eager `jax.random.normal(key, shape)`
compiles a program for every new shape (0.2-4 s each on a 2-core CPU: about 110 s over the suite,
cold); a numpy draw and a transfer compile nothing. Seeded: every run sees the same values."""
import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(tuple(shape), dtype=np.float32))


def uniform(seed: int, shape, low: float = 0.0, high: float = 1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).uniform(low, high, tuple(shape)).astype(np.float32))
