"""lumiere_jax.models.rngs.Rngs: the keys of nnx.Rngs, without JAX building an error message per draw
when a model is built under a trace (which made building quadratic in the model's size)."""
import jax
import numpy as np
from flax import nnx
from jax._src.interpreters import partial_eval

from configs import stunet_tiny
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig

CFG = UNetConfig.from_config(stunet_tiny.get_config().model)


def test_keys_and_initial_values_are_those_of_nnx_rngs():
    ours, flax_rngs = Rngs(5), nnx.Rngs(5)
    for draw in (lambda r: r(), lambda r: r.params(), lambda r: r.default(), lambda r: r.dropout()):
        np.testing.assert_array_equal(jax.random.key_data(draw(ours)), jax.random.key_data(draw(flax_rngs)))
    # Models are initialised by one jitted program (create_sharded): built with either, the same program
    # (the seed is a constant in it: another seed gives another program).
    init = lambda rngs, seed: jax.jit(lambda: nnx.state(UNet(CFG, rngs=rngs(seed)))).lower().as_text()  # noqa: E731
    ours = init(Rngs, 3)
    assert ours == init(nnx.Rngs, 3) and ours != init(nnx.Rngs, 4)


def test_building_under_a_trace_never_builds_a_tracer_error_message(monkeypatch):
    """Each time JAX explains where a tracer came from it walks the whole trace so far; with nnx.Rngs
    that happened twice per key drawn (the reference run below proves the spy sees it)."""
    calls = []
    original = partial_eval.JaxprStackFrame.find_progenitors
    monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors",
                        lambda self, tracer: calls.append(1) or original(self, tracer))
    nnx.eval_shape(lambda: UNet(CFG, rngs=Rngs(0)))
    assert calls == []
    nnx.eval_shape(lambda: UNet(CFG, rngs=nnx.Rngs(0)))
    assert len(calls) >= 100
