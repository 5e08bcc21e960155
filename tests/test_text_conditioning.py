"""The train step's text condition: precomputed embeddings or the frozen encoder in the step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumiere_jax.config import base_config
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.t5 import T5Encoder, t5_config
from lumiere_jax.text.conditioning import text_conditioning


@pytest.fixture(scope="module")
def setup():
    encoder = T5Encoder(t5_config("tiny"), rngs=Rngs(0))
    rng = np.random.default_rng(0)
    mask = np.arange(10)[None] < np.array([10, 4, 1])[:, None]
    tokens = jnp.asarray(rng.integers(1, 256, (3, 10)) * mask, jnp.int32)
    return encoder, tokens, jnp.asarray(mask)


def text_config(encode_in_step: bool):
    text = base_config().text
    text.encode_in_step = encode_in_step
    return text


def test_both_sources_give_the_same_condition(setup):
    encoder, tokens, mask = setup
    reference = np.asarray(encoder(tokens, mask))  # eager, outside any step
    precomputed = {"text_embeddings": jnp.asarray(reference).astype(jnp.bfloat16), "text_mask": mask.astype(jnp.int32)}
    pre_emb, pre_mask = jax.jit(lambda b: text_conditioning(b, text_config(False)))(precomputed)
    in_emb, in_mask = jax.jit(lambda b, e: text_conditioning(b, text_config(True), e))({"text_tokens": tokens}, encoder)
    assert pre_emb.dtype == in_emb.dtype == jnp.bfloat16 and pre_mask.dtype == in_mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(pre_mask), np.asarray(mask))
    np.testing.assert_array_equal(np.asarray(in_mask), np.asarray(mask))
    np.testing.assert_array_equal(np.asarray(pre_emb), np.asarray(precomputed["text_embeddings"]))
    # In-step output is the same float32 computation, rounded once to bfloat16 (8 significant bits).
    np.testing.assert_allclose(np.asarray(in_emb, np.float32), reference, rtol=2**-8, atol=1e-6)


def test_the_encoder_in_the_step_is_frozen(setup):
    """No gradient reaches the encoder's weights through the condition."""
    encoder, tokens, mask = setup

    def loss(encoder):
        batch = {"text_tokens": tokens, "text_mask": mask}
        embeddings, cond_mask = text_conditioning(batch, text_config(True), encoder)
        return jnp.sum(embeddings.astype(jnp.float32) ** 2 * cond_mask[..., None])

    grads = nnx.grad(loss)(encoder)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grads))
    assert float(loss(encoder)) > 0


def test_missing_fields_and_encoder_are_named(setup):
    encoder, tokens, _ = setup
    with pytest.raises(KeyError, match=r"no 'text_embeddings' field, which config\.text\.encode_in_step=False"):
        text_conditioning({"text_tokens": tokens}, text_config(False))
    with pytest.raises(KeyError, match=r"no 'text_tokens' field"):
        text_conditioning({"text_embeddings": tokens}, text_config(True), encoder)
    with pytest.raises(ValueError, match="no encoder was given"):
        text_conditioning({"text_tokens": tokens}, text_config(True))
    with pytest.raises(ValueError, match=r"must be \[B, L, D\] and \[B, L\]"):
        text_conditioning({"text_embeddings": jnp.zeros((3, 10, 4)), "text_mask": jnp.ones((3, 9))}, text_config(False))


def test_encode_fn_takes_any_number_of_rows():
    """Rows that do not split over the mesh's 8 batch shards are padded and dropped again."""
    from lumiere_jax.parallel import logical_axis_rules, make_mesh
    from lumiere_jax.text.encoder import load_text_encoder, make_encode_fn

    text = base_config().text
    text.update(encoder="tiny", checkpoint_format="seed", dtype="float32")
    rules = logical_axis_rules(None)
    mesh = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    encode = make_encode_fn(load_text_encoder(text, mesh, rules), mesh, rules, out_dtype=jnp.float32)
    tokens = np.random.default_rng(0).integers(2, 100, (8, 6)).astype(np.int32)
    mask = np.ones((8, 6), bool)
    six = np.asarray(encode(tokens[:6], mask[:6]))
    assert six.shape[0] == 6
    np.testing.assert_allclose(six, np.asarray(encode(tokens, mask))[:6], atol=1e-6)
