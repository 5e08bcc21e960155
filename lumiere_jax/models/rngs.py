"""`Rngs`: the random keys models are built from, in time linear in their parameter count under a trace.

Every model is built under a trace: `create_sharded` jits its initialisation and abstract states
(resuming, exporting, sampling, compile reports) come from `nnx.eval_shape`. flax 0.12's
`nnx.RngStream` counts its draws with `count[...] += 1`, and that write compares the traced
count's `.sharding` with the old one. A tracer has no `.sharding`: JAX raises an AttributeError
whose message it first builds by walking every equation traced so far, so each draw costs time
proportional to the model built before it, and the whole build is quadratic. Measured on 2 CPU
cores: the abstract 4.3B IF-I-XL took 28 s (1.4 s with these streams), the tiny IF-I test model
5.0 s (0.9 s). These streams write the count with `set_value`, which skips that comparison; the
keys drawn, and so every initial value, are the same as `nnx.Rngs`'.
"""
import jax
from flax import nnx


class RngStream(nnx.RngStream):
    """`nnx.RngStream` drawing the same keys, `fold_in(key, count)`, with a linear-time count update."""

    def __call__(self) -> jax.Array:
        key = jax.random.fold_in(self.key[...], self.count[...])
        self.count.set_value(self.count[...] + 1)
        return key


class Rngs(nnx.Rngs):
    """`nnx.Rngs(seed)` with one `default` stream (every named stream falls back to it), as the
    models here are built; `seed` an int or a PRNG key (traced, as `create_sharded` passes it)."""

    def __init__(self, seed: int | jax.Array):
        # Not nnx.Rngs.__init__: all it does is set the streams, and it would make them flax's own.
        self.default = RngStream(seed, tag="default")
