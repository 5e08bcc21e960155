"""DeepFloyd IF's text conventions against ours: prompt case, the U-Net's mask, the null prompt."""
import types

import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax import parallel
from lumiere_jax.config import base_config
from lumiere_jax.sample.job import prompt_conditioning
from lumiere_jax.text.conventions import (
    IF_MAX_LENGTH, conventions, encode_null_prompt, null_conditioning, prepare_prompts, unet_mask,
)
from lumiere_jax.text.encoder import load_text_encoder, load_tokenizer


def if_config(repo_root, name="deepfloyd_if"):
    config = base_config()
    config.text.update(conventions=name, max_length=IF_MAX_LENGTH, encoder="tiny", checkpoint_format="seed",
                       dtype="float32", vocabulary=str(repo_root / "demo" / "checkpoint" / "vocab.model"))
    return config


def request(prompt, negative=""):
    return types.SimpleNamespace(prompt=prompt, negative_prompt=negative)


def test_bad_conventions_and_lengths_are_named(repo_root):
    with pytest.raises(ValueError, match="conventions='imagen' is not one of"):
        conventions(if_config(repo_root, "imagen").text)
    config = if_config(repo_root)
    config.text.max_length = 128
    with pytest.raises(ValueError, match="encodes 77 tokens.*max_length is 128"):
        conventions(config.text)


def test_ours_keep_the_prompt_the_mask_and_the_empty_null(repo_root):
    text = if_config(repo_root, "lumiere").text
    mask = np.array([[True, False]])
    assert prepare_prompts([" A Red Circle "], text) == [" A Red Circle "]
    assert unet_mask(mask, text) is mask
    null = null_conditioning({"text": jnp.ones((2, 3, 4)), "mask": jnp.ones((2, 3), bool)}, None)
    assert not np.asarray(null["text"]).any() and not np.asarray(null["mask"]).any()


def test_if_prompts_are_lower_cased_and_every_token_is_attended(repo_root):
    text = if_config(repo_root).text
    assert prepare_prompts([" A Red Circle "], text) == ["a red circle"]
    assert np.asarray(unet_mask(jnp.array([[True, False, False]]), text)).all()
    null = null_conditioning({"text": jnp.zeros((2, 3, 4)), "mask": jnp.zeros((2, 3), bool)}, jnp.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(np.asarray(null["text"][1]), np.arange(12.0).reshape(3, 4))
    assert np.asarray(null["mask"]).all()


def test_if_null_prompt_is_the_encoded_empty_string_for_every_request(repo_root):
    config = if_config(repo_root)
    mesh, rules = parallel.make_mesh({"data": -1}), parallel.logical_axis_rules()
    requests = [request("A Red Circle "), request("a red circle"), request("a blue square", negative="a red circle")]
    emb, mask, negative = prompt_conditioning(config, requests, 32, mesh, rules)
    assert emb.shape == (3, IF_MAX_LENGTH, 32) and mask.all()
    np.testing.assert_array_equal(emb[0], emb[1])  # the case and the surrounding spaces do not matter
    null = encode_null_prompt(config.text, mesh, rules)
    encoder = load_text_encoder(config.text, mesh, rules)
    tokens = load_tokenizer(config.text, encoder.config.vocab_size)([""])
    assert tokens.mask.sum() == 1  # "" is the EOS token alone, then padding
    reference = np.asarray(encoder(jnp.asarray(tokens.tokens), jnp.asarray(tokens.mask)))[0]
    np.testing.assert_allclose(null, reference, rtol=2**-8, atol=1e-6)  # the encoder's bfloat16 output
    for row in (0, 1):
        np.testing.assert_allclose(negative["text"][row], null, atol=1e-5)
    np.testing.assert_allclose(negative["text"][2], emb[1], atol=1e-5)  # its own negative prompt
    assert negative["mask"].all()

    ours = if_config(repo_root, "lumiere")
    ours.text.max_length = 16
    emb, mask, negative = prompt_conditioning(ours, requests[:2], 32, mesh, rules)
    assert negative is None and not mask.all() and not np.array_equal(emb[0], emb[1])
