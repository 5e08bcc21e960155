"""CLIP towers, preprocessing, tokenizer and loader against transformers on tiny random checkpoints.

Each checkpoint is a real `transformers.CLIPModel` (tiny, every parameter perturbed so biases and
layer-norm affines are not their zero/one init) saved with `save_pretrained`, plus a tokenizer.json
that transformers' CLIPTokenizer writes from a small byte-level BPE vocabulary. Two checkpoints
cover HF's two pooling rules: `eos_token_id` = the real EOS id (first EOS position, quick_gelu), and
the legacy `eos_token_id == 2` (argmax of the ids, exact GELU, and the `position_ids` buffers that
old converted files carry).
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from PIL import Image
from safetensors.torch import save_file
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from lumiere_jax.evaluation.clip import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPConfig,
    CLIPTokenizer,
    load_clip,
    preprocess_for_clip,
    resized_shape,
)
from lumiere_jax.evaluation.network_weights import WeightsMismatch
from metrics_helpers import IMAGE_SIZE, MAX_LENGTH, VOCAB_SIZE, hf_model, hf_tokenizer, write_checkpoint

PROMPTS = ["a photo of the cat", "A  DOG!!  jumping\tover the Moon", "",
           "the cat and the dog and the photo of a cat that is much longer than sixteen tokens"]
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer_hf():
    return hf_tokenizer()


@pytest.fixture(scope="module")
def modern(tmp_path_factory, tokenizer_hf):
    eos = tokenizer_hf.eos_token_id
    model = hf_model(eos, "quick_gelu", seed=0)
    directory = write_checkpoint(tmp_path_factory.mktemp("clip_modern"), model, tokenizer_hf)
    ours, tokenizer = load_clip(directory)
    return model, ours, tokenizer, directory


@pytest.fixture(scope="module")
def legacy(tmp_path_factory, tokenizer_hf):
    model = hf_model(2, "gelu", seed=1)
    directory = write_checkpoint(tmp_path_factory.mktemp("clip_legacy"), model, tokenizer_hf, with_position_ids=True)
    ours, tokenizer = load_clip(directory)
    return model, ours, tokenizer, directory


@nnx.jit
def _image_features(model, pixels):
    return model.image_features(pixels)


@nnx.jit
def _text_features(model, ids):
    return model.text_features(ids)


def _rel(ours, ref) -> float:
    """Max abs error relative to the reference's largest magnitude."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def _hf_text(model, ids):
    with torch.no_grad():
        return model.get_text_features(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).pooler_output.numpy()


def _hf_image(model, pixels):
    with torch.no_grad():
        nchw = torch.from_numpy(np.asarray(pixels).transpose(0, 3, 1, 2).copy())
        return model.get_image_features(pixel_values=nchw).pooler_output.numpy()


def _ids_with_eos_after_larger_ids(eos: int) -> np.ndarray:
    """Random ids, each row with an id above `eos` before its EOS: argmax pooling and first-EOS
    pooling then pick different positions, so only the right rule matches HF."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, eos, (3, MAX_LENGTH))
    for row, (big, end) in enumerate([(1, 5), (4, 9), (0, 15)]):
        ids[row, big], ids[row, end] = VOCAB_SIZE - 1 - row, eos
        ids[row, end + 1:] = eos
    return ids


@pytest.mark.parametrize("which", ["modern", "legacy"])
def test_image_features_match_transformers(which, request):
    model, ours, _, _ = request.getfixturevalue(which)
    pixels = np.random.default_rng(0).normal(size=(3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    got = _image_features(ours, jnp.asarray(pixels))
    assert got.shape == (3, 24)
    assert _rel(got, _hf_image(model, pixels)) < REL_TOL


def test_text_features_first_eos_rule_matches_transformers(modern):
    model, ours, tokenizer, _ = modern
    tokens = tokenizer(PROMPTS)
    assert _rel(_text_features(ours, jnp.asarray(tokens)), _hf_text(model, tokens)) < REL_TOL
    ids = _ids_with_eos_after_larger_ids(tokenizer.eos_id)
    assert not np.array_equal(ids.argmax(-1), (ids == tokenizer.eos_id).argmax(-1))
    assert _rel(_text_features(ours, jnp.asarray(ids)), _hf_text(model, ids)) < REL_TOL
    short = tokens[:, :10]  # shorter than max_position_embeddings: positions 0..9 only
    short[:, -1] = tokenizer.eos_id
    assert _rel(_text_features(ours, jnp.asarray(short)), _hf_text(model, short)) < REL_TOL


def test_text_features_legacy_argmax_rule_matches_transformers(legacy):
    model, ours, tokenizer, _ = legacy
    assert ours.text_model.eos_token_id == 2
    tokens = tokenizer(PROMPTS)
    assert _rel(_text_features(ours, jnp.asarray(tokens)), _hf_text(model, tokens)) < REL_TOL
    ids = _ids_with_eos_after_larger_ids(tokenizer.eos_id)
    assert _rel(_text_features(ours, jnp.asarray(ids)), _hf_text(model, ids)) < REL_TOL


def test_tokenizer_ids_equal_transformers(modern, tokenizer_hf):
    _, _, tokenizer, _ = modern
    expected = tokenizer_hf(PROMPTS, padding="max_length", truncation=True, max_length=MAX_LENGTH)["input_ids"]
    got = tokenizer(PROMPTS)
    assert got.dtype == np.int32 and got.shape == (len(PROMPTS), MAX_LENGTH)
    np.testing.assert_array_equal(got, np.asarray(expected))
    assert got[3, -1] == tokenizer.eos_id  # truncation keeps the end token
    np.testing.assert_array_equal(tokenizer("a photo of the cat"), got[:1])


def test_tokenizer_length_and_bad_prompts(modern, tokenizer_hf):
    _, _, _, directory = modern
    short = CLIPTokenizer(os.path.join(directory, "tokenizer.json"), max_length=8)
    expected = tokenizer_hf(PROMPTS, padding="max_length", truncation=True, max_length=8)["input_ids"]
    np.testing.assert_array_equal(short(PROMPTS), np.asarray(expected))
    with pytest.raises(TypeError, match="takes strings, got int"):
        short(["a cat", 3])


def _pil_float_reference(image01: np.ndarray, size: int) -> np.ndarray:
    """PIL's BICUBIC on 32-bit float images ('F' mode: the filter CLIPImageProcessor applies, no
    8-bit rounding), width pass then height pass, each clamped to [0, 1] as PIL's 8-bit passes are;
    then the centre crop and normalisation."""
    height, width = image01.shape[:2]
    new_h, new_w = resized_shape(height, width, size)

    def resize(channel, shape_wh):
        return np.clip(np.asarray(Image.fromarray(channel).resize(shape_wh, Image.Resampling.BICUBIC)), 0, 1)

    resized = np.stack([resize(resize(image01[..., c], (new_w, height)), (new_w, new_h)) for c in range(3)], -1)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return (resized[top:top + size, left:left + size] - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)


# jax resamples with float32 weights and sums, PIL's 'F' mode with double ones: ~3e-6 of the
# [0, 1] range seen; 1e-5 of it allowed (in normalised units: / the smallest std).
FLOAT_TOL = 1e-5 / min(CLIP_STD)
# PIL's 8-bit path rounds after each of its two separable passes (and clamps, as we do; clamping
# cannot enlarge a difference). The first-pass rounding (<= 0.5 step) goes through the second pass
# scaled by at most sum|w| <= 1.25 (the Keys a=-0.5 kernel's maximum, at phase 1/2; widened
# downsampling kernels sum to less), and the final rounding adds 0.5 step: <= 1.125 8-bit steps,
# plus 0.01 for PIL's fixed-point coefficients; / 255 and / the smallest std in normalised units.
PIL_UINT8_TOL = (0.5 * 1.25 + 0.5 + 0.01) / 255 / min(CLIP_STD)


@pytest.mark.parametrize("shape", [(48, 60), (61, 37), (20, 26), (32, 32)])  # down, down portrait, up, same
def test_preprocessing_matches_pil_bicubic_and_clip_image_processor(shape):
    # Full-range noise: every pass overshoots [0, 255] somewhere, so the clamping is exercised.
    image = np.random.default_rng(shape[0]).integers(0, 256, shape + (3,)).astype(np.uint8)
    image01 = image.astype(np.float32) / 255

    ours = np.asarray(preprocess_for_clip(jnp.asarray(image01)[None], image_size=IMAGE_SIZE))[0]
    assert ours.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.max(np.abs(ours - _pil_float_reference(image01, IMAGE_SIZE))) < FLOAT_TOL

    processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                      crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    hf = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert np.max(np.abs(ours - hf)) <= PIL_UINT8_TOL


def test_preprocessing_keeps_leading_axes_and_rejects_bad_frames():
    video = jax.random.uniform(jax.random.key(0), (2, 3, 40, 50, 3))
    out = preprocess_for_clip(video, image_size=IMAGE_SIZE)
    assert out.shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(out[1, 2], preprocess_for_clip(video[1, 2], IMAGE_SIZE), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\., height, width, 3\).*\(2, 40, 50, 4\)"):
        preprocess_for_clip(jnp.zeros((2, 40, 50, 4)), IMAGE_SIZE)


def test_towers_reject_wrong_input_shapes(modern):
    _, ours, _, _ = modern
    with pytest.raises(ValueError, match=r"\(batch, 32, 32, 3\).*\(2, 3, 32, 32\).*preprocess_for_clip"):
        ours.image_features(jnp.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE)))
    with pytest.raises(ValueError, match=r"length <= 16.*\(1, 17\)"):
        ours.text_features(jnp.zeros((1, MAX_LENGTH + 1), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        ours.text_features(jnp.zeros((1, MAX_LENGTH)))


def _copy_without_weights(source, target):
    os.makedirs(target)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), target)
    return target


def test_loader_names_missing_misshaped_and_unexpected_tensors(modern, tmp_path):
    model, _, _, directory = modern
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    state["vision_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 31)
    state["text_model.extra_head.weight"] = torch.zeros(3)
    target = _copy_without_weights(directory, tmp_path / "broken")
    save_file(state, os.path.join(target, "model.safetensors"))
    with pytest.raises(WeightsMismatch) as err:
        load_clip(target)
    message = str(err.value)
    assert "missing 1: text_model/encoder/layers/1/mlp/fc2/bias" in message
    assert "mis-shaped 1: vision_model/encoder/layers/0/self_attn/q_proj/kernel (31, 32) (expected (32, 32))" in message
    assert "unexpected 1: text_model/extra_head/weight" in message


def test_loader_errors_name_the_missing_file(modern, tmp_path):
    _, _, _, directory = modern
    no_tokenizer = tmp_path / "no_tokenizer"
    os.makedirs(no_tokenizer)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(directory, name), no_tokenizer)
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json.*does not exist.*save_pretrained"):
        load_clip(no_tokenizer)
    no_weights = _copy_without_weights(directory, tmp_path / "no_weights")
    with pytest.raises(FileNotFoundError, match=r"no model\.safetensors"):
        load_clip(no_weights)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip(tmp_path)


def test_loader_refuses_a_tokenizer_with_another_eos(modern, tmp_path):
    _, _, _, directory = modern
    target = tmp_path / "other_eos"
    shutil.copytree(directory, target)
    config = json.loads((target / "config.json").read_text())
    config["text_config"]["eos_token_id"] = 7
    (target / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ends prompts with id 523 but config.json's text_config.eos_token_id is 7"):
        load_clip(target)


@pytest.mark.parametrize("raw", [
    {"projection_dim": 768, "text_config": {"hidden_size": 64, "eos_token_id": 2},
     "vision_config": {"patch_size": 16}},
    # Older configs: a non-null *_config_dict replaces *_config (HF defaults fill what it omits).
    {"projection_dim": 768, "text_config": {"hidden_size": 64, "eos_token_id": 2},
     "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
     "vision_config": {"hidden_size": 512}, "vision_config_dict": {"hidden_size": 1024, "patch_size": 14,
                                                                   "num_hidden_layers": 24, "num_attention_heads": 16}},
])
def test_config_resolves_sub_configs_like_transformers(raw):
    ours = CLIPConfig.from_hf(raw)
    hf = transformers.CLIPConfig(**json.loads(json.dumps(raw)))
    assert ours.projection_dim == hf.projection_dim
    for mine, theirs in ((ours.text, hf.text_config), (ours.vision, hf.vision_config)):
        for field, value in vars(mine).items():
            assert value == getattr(theirs, field), field
