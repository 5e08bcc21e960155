"""The T5 encoder itself: bucket formula, presets, logical sharding at XXL scale, sharded forward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.t5 import SIZES, T5Encoder, relative_position_buckets, t5_config
from lumiere_jax.parallel import batch_sharding, logical_axis_rules, make_mesh, shard_module, state_shardings
from lumiere_jax.text.checkpoint import abstract_encoder, count_parameters

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_relative_position_buckets_match_transformers():
    length = 400  # offsets up to +-399: exact, logarithmic and clipped buckets in both directions
    ours = relative_position_buckets(length, 32, 128)
    offsets = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    ref = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        offsets, bidirectional=True, num_buckets=32, max_distance=128
    )
    np.testing.assert_array_equal(ours, ref.numpy())


def hf_config(size: str, variant: str):
    d_model, num_heads, head_dim, d_ff, num_layers = SIZES[size]
    cls = transformers.UMT5Config if variant == "umt5" else transformers.T5Config
    vocab = t5_config(size, variant).vocab_size
    return cls(vocab_size=vocab, d_model=d_model, d_kv=head_dim, d_ff=d_ff, num_layers=num_layers,
               num_heads=num_heads, feed_forward_proj="gated-gelu")


@pytest.mark.parametrize("variant", ["t5_1_1", "umt5"])
def test_preset_parameter_counts_match_transformers(variant):
    """Same parameter count as the HF encoder of the same shape (built on torch's meta device);
    T5.1.1-XXL is the ~4.7B-parameter encoder of Imagen and Lumiere."""
    cls = transformers.UMT5EncoderModel if variant == "umt5" else transformers.T5EncoderModel
    for size in ("small", "xxl"):
        with torch.device("meta"):
            reference = sum(p.numel() for p in cls(hf_config(size, variant)).parameters())
        assert count_parameters(t5_config(size, variant)) == reference, size
    assert round(count_parameters(t5_config("xxl")) / 1e9, 2) == 4.76


def test_xxl_parameters_shard_over_fsdp_and_tensor():
    """Every parameter carries logical names; on (data=2, fsdp=2, tensor=2) each matrix of the
    XXL encoder is split four ways, so a device holds ~1/4 of the weights (abstract: no memory)."""
    mesh, rules = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), logical_axis_rules(None)
    _, state = nnx.split(abstract_encoder(t5_config("xxl")))
    shardings = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
    total = per_device = 0
    for path, variable in nnx.to_flat_state(state):
        names, shape = variable.get_metadata()["out_sharding"], variable.get_value().shape
        assert len(names) == len(shape), path
        sharding = shardings[path].get_value()
        if len(shape) >= 2 and "relpos" not in names:
            assert {"fsdp", "tensor"} <= set(sharding.spec), (path, sharding.spec)
        total += np.prod(shape)
        per_device += np.prod(sharding.shard_shape(shape))
    assert total / per_device == pytest.approx(4, rel=1e-3)


@pytest.fixture(scope="module")
def tiny_batch():
    rng = np.random.default_rng(1)
    lengths = np.array([12, 3, 7, 1])
    mask = np.arange(12)[None] < lengths[:, None]
    return jnp.asarray(rng.integers(1, 256, (4, 12)) * mask, jnp.int32), jnp.asarray(mask)


@pytest.mark.parametrize("variant", ["t5_1_1", "umt5"])
def test_sharded_encoder_equals_unsharded(variant, tiny_batch):
    tokens, mask = tiny_batch
    cfg = t5_config("tiny", variant)
    encoder = T5Encoder(cfg, rngs=Rngs(3))
    reference = np.asarray(jax.jit(lambda m, t, k: m(t, k))(encoder, tokens, mask))
    mesh, rules = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), logical_axis_rules(None)
    sharded = shard_module(T5Encoder(cfg, rngs=Rngs(3)), mesh, rules)
    put = lambda x: jax.device_put(x, batch_sharding(mesh, rules, x.ndim))  # noqa: E731
    out = jax.jit(lambda m, t, k: m(t, k))(sharded, put(tokens), put(mask))
    # Same math; only the order of the all-reduced partial sums differs.
    np.testing.assert_allclose(np.asarray(out), reference, atol=1e-5, rtol=1e-5)


def test_mask_defaults_to_nonzero_tokens_and_padding_does_not_leak(tiny_batch):
    """Real tokens' outputs ignore whatever sits in padded positions."""
    tokens, mask = tiny_batch
    encoder = T5Encoder(t5_config("tiny"), rngs=Rngs(0))
    run = jax.jit(lambda m, t, k: m(t, k))
    out = run(encoder, tokens, mask)
    np.testing.assert_array_equal(np.asarray(run(encoder, tokens, None)), np.asarray(out))
    scrambled = jnp.where(mask, tokens, 77)
    np.testing.assert_allclose(np.asarray(run(encoder, scrambled, mask))[mask], np.asarray(out)[mask], atol=1e-6)
