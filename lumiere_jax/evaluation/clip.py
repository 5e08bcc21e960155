"""CLIP (ViT image tower + causal text tower) in Flax NNX, filled from a Hugging Face checkpoint.

CLIP similarity (DESIGN.md section 7) needs CLIP image and text embeddings. transformers 5 dropped
its Flax CLIP, so this module owns the network and reads a HF `CLIPModel` directory itself:
`config.json` (architecture), `model.safetensors` (weights, read with numpy through
`read_safetensors`) and `tokenizer.json` (run by the `tokenizers` library, the `metrics` extra).

Module paths mirror the HF state_dict names (`.` -> `/`, including HF's `pre_layrnorm` spelling),
so the mismatch errors of `assign_arrays` name tensors a user can find in the file. The only
renames are the leaf names and layouts of flax layers:

    <linear>.weight [out, in]              -> <linear>/kernel [in, out]       (q/k/v/out_proj, fc1, fc2,
                                                                               visual/text_projection)
    <layer norm>.weight                    -> <layer norm>/scale
    <embedding>.weight                     -> <embedding>/embedding           (token/position_embedding)
    patch_embedding.weight [D, 3, p, p]    -> patch_embedding/kernel [p, p, 3, D]
    *.bias, class_embedding, logit_scale   -> same path

`*.embeddings.position_ids` (an arange buffer that checkpoints converted from old
pytorch_model.bin files still carry, and HF ignores) is skipped. Everything else in the file must
be consumed, and every parameter filled.

Both towers return *unnormalised* projected embeddings, exactly HF's `get_image_features` /
`get_text_features`; the caller L2-normalises them before taking the cosine.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumiere_jax.evaluation.network_weights import assign_arrays
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.text.hf_checkpoint import INDEX_FILE, SINGLE_FILE, read_safetensors

# OpenAI CLIP's RGB statistics (HF's OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# HF CLIPTextModel keeps this `eos_token_id` from configs written before transformers PR #24773 and
# then pools at argmax(input_ids) (the EOS being the highest id of the original vocabulary).
LEGACY_EOS_TOKEN_ID = 2
# transformers' CLIPTextConfig / CLIPVisionConfig defaults (the ViT-B/32 towers): HF fills keys a
# config.json leaves out with these, so a diff-only config means the same network here.
HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_attention_heads=8,
                        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
                        layer_norm_eps=1e-5, eos_token_id=49407)
HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                          num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
HF_PROJECTION_DIM = 512
ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # OpenAI's CLIP
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # torch's exact (erf) GELU, e.g. LAION checkpoints
}
# Metric values must not depend on an accelerator's default float32 matmul precision (bf16 passes on TPU).
PRECISION = jax.lax.Precision.HIGHEST

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
DEFAULT_PAD_TOKEN = "<|endoftext|>"  # transformers' CLIPTokenizer default


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """One transformer tower (the fields both HF sub-configs share)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    hidden_act: str
    layer_norm_eps: float


@dataclasses.dataclass(frozen=True)
class VisionConfig(TowerConfig):
    image_size: int
    patch_size: int


@dataclasses.dataclass(frozen=True)
class TextConfig(TowerConfig):
    vocab_size: int
    max_position_embeddings: int
    eos_token_id: int


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """The architecture of a HF `CLIPModel`, read from its config.json."""

    vision: VisionConfig
    text: TextConfig
    projection_dim: int

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "CLIPConfig":
        """Reads a HF CLIPModel config.json."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CLIP config {os.fspath(path)!r} does not exist; a CLIP checkpoint directory "
                                    "holds config.json, model.safetensors and tokenizer.json (HF save_pretrained)")
        with open(path) as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{os.fspath(path)}: not valid JSON ({err})") from None
        return cls.from_hf(raw, source=os.fspath(path))

    @classmethod
    def from_hf(cls, raw: dict, source: str = "CLIP config") -> "CLIPConfig":
        """The config of a HF CLIPModel config dict, resolving sub-configs the way HF does: a non-null
        `text_config_dict` / `vision_config_dict` (older configs) replaces the sub-config, HF defaults
        filling the keys it omits; otherwise `text_config` / `vision_config` over the defaults."""
        if raw.get("model_type", "clip") != "clip":
            raise ValueError(f"{source}: model_type {raw['model_type']!r} is not 'clip'; this loader reads a full HF "
                             "CLIPModel (both towers and both projections)")
        text = _sub_config(raw, "text", HF_TEXT_DEFAULTS)
        vision = _sub_config(raw, "vision", HF_VISION_DEFAULTS)
        projection_dim = raw.get("projection_dim", HF_PROJECTION_DIM)
        for name, value in (("text_config.eos_token_id", text["eos_token_id"]),
                            ("vision_config.image_size", vision["image_size"]),
                            ("vision_config.patch_size", vision["patch_size"]), ("projection_dim", projection_dim)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{source}: {name} is {value!r}; this CLIP supports a single integer only")
        if vision["num_channels"] != 3:
            raise ValueError(f"{source}: vision_config.num_channels is {vision['num_channels']}; CLIP similarity "
                             "feeds RGB frames (3 channels)")
        config = cls(vision=_tower(VisionConfig, vision), text=_tower(TextConfig, text), projection_dim=projection_dim)
        _validate(config, source)
        return config


def _sub_config(raw: dict, tower: str, defaults: dict) -> dict:
    """One sub-config as HF resolves it (see `CLIPConfig.from_hf`)."""
    legacy = raw.get(f"{tower}_config_dict")
    given = legacy if legacy is not None else (raw.get(f"{tower}_config") or {})
    return {**defaults, **given}


def _tower(kind, values: dict):
    """A `VisionConfig` / `TextConfig` from the resolved HF keys (extra HF keys are not ours)."""
    return kind(**{field.name: values[field.name] for field in dataclasses.fields(kind)})


def _validate(config: CLIPConfig, source: str) -> None:
    """Refuses configs the network cannot be built from, naming the offending key."""
    for tower, sub in (("vision_config", config.vision), ("text_config", config.text)):
        if sub.hidden_size % sub.num_attention_heads:
            raise ValueError(f"{source}: {tower}.hidden_size {sub.hidden_size} is not a multiple of "
                             f"num_attention_heads {sub.num_attention_heads}")
        if sub.hidden_act not in ACTIVATIONS:
            raise ValueError(f"{source}: {tower}.hidden_act {sub.hidden_act!r} is not supported "
                             f"(supported: {', '.join(ACTIVATIONS)})")
    if config.vision.image_size % config.vision.patch_size:
        raise ValueError(f"{source}: vision_config.image_size {config.vision.image_size} is not a multiple of "
                         f"patch_size {config.vision.patch_size}")


# ----------------------------------------------------------------------------------------------
# The network. Attribute names are HF's (see the module docstring).


def _layer_norm(features: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance as torch computes it: E[x^2] - E[x]^2 loses float32 digits on the
    # residual stream's large-mean channels.
    return nnx.LayerNorm(features, epsilon=eps, use_fast_variance=False, rngs=rngs)


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=use_bias, precision=PRECISION, rngs=rngs)


class CLIPAttention(nnx.Module):
    """Multi-head self-attention; `causal` masks future tokens (text tower)."""

    def __init__(self, config: TowerConfig, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.q_proj, self.k_proj = _linear(d, d, rngs), _linear(d, d, rngs)
        self.v_proj, self.out_proj = _linear(d, d, rngs), _linear(d, d, rngs)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        b, length, d = x.shape
        head_dim = d // self.num_heads

        def heads(t):
            return t.reshape(b, length, self.num_heads, head_dim)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=PRECISION) * head_dim**-0.5
        if causal:
            keep = jnp.tril(jnp.ones((length, length), dtype=bool))
            logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=PRECISION)
        return self.out_proj(out.reshape(b, length, d))


class CLIPMLP(nnx.Module):
    def __init__(self, config: TowerConfig, rngs: nnx.Rngs):
        self.activation = ACTIVATIONS[config.hidden_act]
        self.fc1 = _linear(config.hidden_size, config.intermediate_size, rngs)
        self.fc2 = _linear(config.intermediate_size, config.hidden_size, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.activation(self.fc1(x)))


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm residual block: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, config: TowerConfig, rngs: nnx.Rngs):
        self.self_attn = CLIPAttention(config, rngs)
        self.layer_norm1 = _layer_norm(config.hidden_size, config.layer_norm_eps, rngs)
        self.mlp = CLIPMLP(config, rngs)
        self.layer_norm2 = _layer_norm(config.hidden_size, config.layer_norm_eps, rngs)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x), causal)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nnx.Module):
    def __init__(self, config: TowerConfig, rngs: nnx.Rngs):
        self.layers = nnx.List([CLIPEncoderLayer(config, rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        for layer in self.layers:
            x = layer(x, causal)
        return x


class CLIPVisionEmbeddings(nnx.Module):
    """Non-overlapping patches -> tokens, a learned class token first, learned positions."""

    def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.patch_embedding = nnx.Conv(3, d, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=False,
                                        precision=PRECISION, rngs=rngs)
        self.class_embedding = nnx.Param(jax.random.normal(rngs.params(), (d,)) * d**-0.5)
        self.position_embedding = nnx.Embed((config.image_size // p) ** 2 + 1, d, rngs=rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        patches = self.patch_embedding(pixels)  # (B, g, g, D), row-major like torch's flatten(2)
        b, _, _, d = patches.shape
        tokens = patches.reshape(b, -1, d)
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, d))
        return jnp.concatenate([cls, tokens], axis=1) + self.position_embedding.embedding[...]


class CLIPVisionTransformer(nnx.Module):
    """HF's CLIPVisionModel: the class token's final state, post-layer-normed."""

    def __init__(self, config: VisionConfig, rngs: nnx.Rngs):
        self.embeddings = CLIPVisionEmbeddings(config, rngs)
        self.pre_layrnorm = _layer_norm(config.hidden_size, config.layer_norm_eps, rngs)
        self.encoder = CLIPEncoder(config, rngs)
        self.post_layernorm = _layer_norm(config.hidden_size, config.layer_norm_eps, rngs)

    def __call__(self, pixels: jax.Array) -> jax.Array:
        hidden = self.encoder(self.pre_layrnorm(self.embeddings(pixels)), causal=False)
        return self.post_layernorm(hidden[:, 0])


class CLIPTextEmbeddings(nnx.Module):
    def __init__(self, config: TextConfig, rngs: nnx.Rngs):
        self.token_embedding = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs)
        self.position_embedding = nnx.Embed(config.max_position_embeddings, config.hidden_size, rngs=rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        positions = self.position_embedding.embedding[: token_ids.shape[1]]
        return self.token_embedding(token_ids) + positions


class CLIPTextTransformer(nnx.Module):
    """HF's CLIPTextModel: causal encoder, final layer norm, the state at the EOS token.

    Which position is "the EOS token" follows HF exactly:
    - `eos_token_id == 2` (configs from before transformers PR #24773, e.g. openai/clip-vit-base-patch32):
      argmax(token_ids), the first occurrence of the largest id, which is OpenAI's `<|endoftext|>`
      (49407, the last id of its vocabulary);
    - any other `eos_token_id`: the first position equal to it (0 when a row has none, as in HF;
      `CLIPTokenizer` always writes one).
    The pooled position attends only to itself and earlier tokens (causal mask), so padding after
    it cannot change the result and no padding mask is needed.
    """

    def __init__(self, config: TextConfig, rngs: nnx.Rngs):
        self.eos_token_id = config.eos_token_id
        self.embeddings = CLIPTextEmbeddings(config, rngs)
        self.encoder = CLIPEncoder(config, rngs)
        self.final_layer_norm = _layer_norm(config.hidden_size, config.layer_norm_eps, rngs)

    def __call__(self, token_ids: jax.Array) -> jax.Array:
        hidden = self.final_layer_norm(self.encoder(self.embeddings(token_ids), causal=True))
        if self.eos_token_id == LEGACY_EOS_TOKEN_ID:
            pooled_at = jnp.argmax(token_ids, axis=-1)
        else:
            pooled_at = jnp.argmax(token_ids == self.eos_token_id, axis=-1)
        return jnp.take_along_axis(hidden, pooled_at[:, None, None], axis=1)[:, 0]


class CLIPModel(nnx.Module):
    """Both CLIP towers and their projections (HF `CLIPModel`), float32, inference only."""

    def __init__(self, config: CLIPConfig, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = CLIPVisionTransformer(config.vision, rngs)
        self.text_model = CLIPTextTransformer(config.text, rngs)
        self.visual_projection = _linear(config.vision.hidden_size, config.projection_dim, rngs, use_bias=False)
        self.text_projection = _linear(config.text.hidden_size, config.projection_dim, rngs, use_bias=False)
        # Unused by the similarity (a cosine); kept so the checkpoint is consumed whole.
        self.logit_scale = nnx.Param(jnp.asarray(2.6592, jnp.float32))

    def image_features(self, pixels: jax.Array) -> jax.Array:
        """(B, S, S, 3) pixels from `preprocess_for_clip` -> (B, projection_dim), unnormalised."""
        size = self.config.vision.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (size, size, 3):
            raise ValueError(f"CLIP image tower takes (batch, {size}, {size}, 3) channels-last pixels, got shape "
                             f"{tuple(pixels.shape)}; run preprocess_for_clip(frames, image_size={size}) first")
        return self.visual_projection(self.vision_model(pixels.astype(jnp.float32)))

    def text_features(self, token_ids: jax.Array) -> jax.Array:
        """(B, L) token ids from `CLIPTokenizer` (L <= max_position_embeddings) -> (B, projection_dim),
        unnormalised."""
        limit = self.config.text.max_position_embeddings
        if token_ids.ndim != 2 or not 0 < token_ids.shape[1] <= limit:
            raise ValueError(f"CLIP text tower takes (batch, length <= {limit}) token ids, got shape "
                             f"{tuple(token_ids.shape)}; tokenize prompts with CLIPTokenizer")
        if not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise ValueError(f"CLIP token ids must be integers, got {token_ids.dtype}")
        return self.text_projection(self.text_model(token_ids))


# ----------------------------------------------------------------------------------------------
# Preprocessing.


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side `size` and the longer int(size * long / short), HF's
    `get_resize_output_image_size(default_to_square=False)` rule (truncation included)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def _bicubic_like_pil(images: jax.Array, height: int, width: int) -> jax.Array:
    """(N, H, W, 3) -> (N, height, width, 3) with PIL's antialiased BICUBIC (Keys a = -0.5, kernel
    widened by the scale when downsampling, half-pixel centres: what `jax.image.resize(antialias=True)`
    computes), as PIL runs it on 8-bit images: the width pass, then the height pass, each result
    clamped to the valid range (PIL rounds to 8 bits there too; that is not copied)."""
    n, _, _, c = images.shape
    wide = jnp.clip(jax.image.resize(images, (n, images.shape[1], width, c), "bicubic", antialias=True), 0.0, 1.0)
    return jnp.clip(jax.image.resize(wide, (n, height, width, c), "bicubic", antialias=True), 0.0, 1.0)


def preprocess_for_clip(frames: jax.Array, image_size: int = 224) -> jax.Array:
    """Frames (..., H, W, 3) float RGB in [0, 1] -> (..., S, S, 3) CLIP input, S = `image_size`.

    HF CLIPImageProcessor's steps (its PIL backend), in jnp so they run inside a sharded jit:
    resize so the shorter side is S and the longer int(S * long / short) (`_bicubic_like_pil`),
    centre-crop S x S at offsets ((H' - S) // 2, (W' - S) // 2), subtract CLIP_MEAN, divide by
    CLIP_STD. HF quantises the frame and the resized image to 8 bits; nothing is quantised here,
    which leaves at most about one 8-bit step of difference per pixel (measured in the tests).
    """
    frames = jnp.asarray(frames)
    if frames.ndim < 3 or frames.shape[-1] != 3 or 0 in frames.shape[-3:-1]:
        raise ValueError(f"preprocess_for_clip takes (..., height, width, 3) RGB frames, got shape "
                         f"{tuple(frames.shape)}")
    *lead, height, width, _ = frames.shape
    new_h, new_w = resized_shape(height, width, image_size)
    resized = _bicubic_like_pil(frames.reshape(-1, height, width, 3).astype(jnp.float32), new_h, new_w)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    crop = resized[:, top : top + image_size, left : left + image_size]
    normalised = (crop - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
    return normalised.reshape(*lead, image_size, image_size, 3)


# ----------------------------------------------------------------------------------------------
# Tokenizer.


class CLIPTokenizer:
    """A checkpoint's tokenizer.json run by HF `tokenizers`: ids padded/truncated to `max_length`.

    Normalisation (NFC, whitespace, lower-casing), the byte-level BPE and the `<|startoftext|>` /
    `<|endoftext|>` wrapping all come from tokenizer.json, as in transformers' CLIPTokenizer;
    truncation keeps the EOS. The pad token is tokenizer_config.json's `pad_token` when that file
    exists (transformers reads it there), else `<|endoftext|>`.
    """

    def __init__(self, tokenizer_file: Union[str, os.PathLike], max_length: int, pad_token: str = DEFAULT_PAD_TOKEN):
        path = os.fspath(tokenizer_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CLIP tokenizer {path!r} does not exist; the checkpoint directory needs the tokenizer.json of "
                "its tokenizer (transformers: CLIPTokenizer.from_pretrained(NAME).save_pretrained(DIR) writes it)")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise ImportError("CLIP text features need Hugging Face's `tokenizers`: pip install "
                              "'lumiere_jax[metrics]' (or pip install tokenizers)") from None
        try:
            self.backend = Tokenizer.from_file(path)
        except Exception as err:  # tokenizers raises its own Exception type for unreadable files
            raise ValueError(f"{path}: not a tokenizers tokenizer.json ({err})") from None
        pad_id = self.backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
        empty = self.backend.encode("").ids
        if not empty:
            raise ValueError(f"{path}: the tokenizer adds no start/end tokens (no post_processor); the CLIP text "
                             "tower pools at the end token, so use the checkpoint's own tokenizer.json")
        # The id the post-processor closes every prompt with: where the text tower pools.
        self.eos_id = empty[-1]
        self.max_length = max_length
        self.backend.enable_truncation(max_length)
        self.backend.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_directory(cls, directory: Union[str, os.PathLike], max_length: int) -> "CLIPTokenizer":
        """The tokenizer of a HF checkpoint directory (tokenizer.json [+ tokenizer_config.json])."""
        config_path = os.path.join(directory, TOKENIZER_CONFIG_FILE)
        pad_token = DEFAULT_PAD_TOKEN
        if os.path.isfile(config_path):
            with open(config_path) as f:
                pad = json.load(f).get("pad_token") or DEFAULT_PAD_TOKEN
            pad_token = pad["content"] if isinstance(pad, dict) else pad
        return cls(os.path.join(directory, TOKENIZER_FILE), max_length, pad_token)

    def __call__(self, prompts: Union[str, Sequence[str]]) -> np.ndarray:
        """int32 (N, max_length) ids of `prompts` (one string or a sequence of strings)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"CLIPTokenizer takes strings, got {', '.join(sorted(set(bad)))}")
        return np.asarray([e.ids for e in self.backend.encode_batch(prompts)], dtype=np.int32).reshape(
            len(prompts), self.max_length)


# ----------------------------------------------------------------------------------------------
# Loading a HF checkpoint directory.

_LINEARS = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "visual_projection", "text_projection"}
_NORMS = {"layer_norm1", "layer_norm2", "pre_layrnorm", "post_layernorm", "final_layer_norm"}
_EMBEDDINGS = {"token_embedding", "position_embedding"}
_SKIPPED_SUFFIX = "embeddings.position_ids"


def _ours(name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """(our parameter path, array in our layout) of one HF tensor (table in the module docstring).

    A tensor of an unexpected rank keeps its layout so that `assign_arrays` reports its true shape;
    a name we do not know keeps its path and is reported as unexpected.
    """
    *parents, leaf = name.split(".")
    owner = parents[-1] if parents else ""
    if leaf == "weight":
        if owner in _LINEARS:
            return "/".join(parents + ["kernel"]), array.T if array.ndim == 2 else array
        if owner in _NORMS:
            return "/".join(parents + ["scale"]), array
        if owner in _EMBEDDINGS:
            return "/".join(parents + ["embedding"]), array
        if owner == "patch_embedding":
            return "/".join(parents + ["kernel"]), array.transpose(2, 3, 1, 0) if array.ndim == 4 else array
    return name.replace(".", "/"), array


def hf_arrays(tensors: dict) -> dict[str, np.ndarray]:
    """Our flat {path: array} of a HF CLIPModel state dict ({name: LazyArray}, `read_safetensors`)."""
    arrays = {}
    for name, tensor in tensors.items():
        if not name.endswith(_SKIPPED_SUFFIX):
            path, value = _ours(name, tensor.read_all())
            arrays[path] = value
    return arrays


def _check_tokenizer(tokenizer: CLIPTokenizer, config: TextConfig, directory: str) -> None:
    """Refuses a tokenizer whose ids the text tower would misread (a different vocabulary or EOS)."""
    vocab = tokenizer.backend.get_vocab_size()
    if vocab > config.vocab_size:
        raise ValueError(f"{directory}: tokenizer.json has {vocab} tokens but the text tower embeds "
                         f"{config.vocab_size}; the tokenizer does not belong to this checkpoint")
    if config.eos_token_id == LEGACY_EOS_TOKEN_ID:
        if tokenizer.eos_id != vocab - 1:
            raise ValueError(f"{directory}: config.json's legacy eos_token_id 2 pools at the largest token id, "
                             f"but the tokenizer's end token is {tokenizer.eos_id}, not the last id {vocab - 1}")
    elif tokenizer.eos_id != config.eos_token_id:
        raise ValueError(f"{directory}: the tokenizer ends prompts with id {tokenizer.eos_id} but config.json's "
                         f"text_config.eos_token_id is {config.eos_token_id}")


def load_clip(directory: Union[str, os.PathLike]) -> tuple[CLIPModel, CLIPTokenizer]:
    """(model, tokenizer) of a HF CLIPModel directory: config.json, model.safetensors (or a sharded
    model.safetensors.index.json) and tokenizer.json.

    The model is built abstractly (no random init of ~400M parameters) and then filled; a file that
    does not fit names every missing, unexpected and mis-shaped tensor (`WeightsMismatch`).
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"CLIP checkpoint directory {directory!r} does not exist")
    config = CLIPConfig.from_file(os.path.join(directory, CONFIG_FILE))
    tokenizer = CLIPTokenizer.from_directory(directory, config.text.max_position_embeddings)
    _check_tokenizer(tokenizer, config.text, directory)
    if not any(os.path.exists(os.path.join(directory, name)) for name in (SINGLE_FILE, INDEX_FILE)):
        raise FileNotFoundError(f"{directory} holds no {SINGLE_FILE}; save the checkpoint with transformers' "
                                "save_pretrained (safetensors is its default) or convert its pytorch_model.bin")
    tensors = read_safetensors(directory, what="CLIP checkpoint")
    model = nnx.eval_shape(lambda: CLIPModel(config, Rngs(0)))
    assign_arrays(model, hf_arrays(tensors), source=f"CLIP checkpoint {directory}")
    return model, tokenizer
