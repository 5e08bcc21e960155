"""The T5.1.1 / UMT5 encoder in Flax NNX: the frozen text tower that conditions the video model.

Lumiere, like Imagen, conditions on T5-XXL token embeddings. Architecture facts (T5.1.1 as
released in t5x, identical in Hugging Face `transformers`):

- pre-norm residual blocks; RMS norm without mean or bias, eps 1e-6, statistics in float32;
- self-attention without the 1/sqrt(d_k) factor (t5x folds it into the query initialisation);
- a learned relative-position bias added to the attention logits: 32 buckets, half for each
  direction, exact for distances < 8, logarithmic up to 128. T5.1.1 shares one table across the
  layers; UMT5 gives every layer its own table (the only structural difference);
- gated-GELU MLP (tanh-approximated GELU), no biases anywhere, no embedding scaling;
- token 0 is padding.

Parameter layout (ours; see `lumiere_jax.text` for the t5x and HF maps): attention kernels are
3-D, query/key/value [embed, heads, kv] and out [heads, kv, embed], so the head axis can be
sharded over 'tensor' by name; the relative-position table is [heads, buckets] as in t5x.
Dropout is absent on purpose: the encoder is frozen and only ever run for inference.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lumiere_jax.parallel.axes import EMBED, HEADS, KV, MLP, NORM, RELPOS, VOCAB, partitioned

VARIANTS = ("t5_1_1", "umt5")
# Vocabulary sizes of the released checkpoints: T5's 32000 pieces + 100 extra ids, padded to a
# multiple of 128; UMT5's 256000 pieces + extra ids, padded likewise.
VOCAB_SIZES = {"t5_1_1": 32128, "umt5": 256384}
# (d_model, num_heads, head_dim, d_ff, num_layers) of the released encoders; "tiny" is for tests.
SIZES = {
    "tiny": (32, 4, 8, 64, 2),
    "small": (512, 6, 64, 1024, 8),
    "base": (768, 12, 64, 2048, 12),
    "large": (1024, 16, 64, 2816, 24),
    "xl": (2048, 32, 64, 5120, 24),
    "xxl": (4096, 64, 64, 10240, 24),
}
TINY_VOCAB = 256


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Hyper-parameters of one encoder; `t5_config` builds the released presets."""

    vocab_size: int
    d_model: int
    num_heads: int
    head_dim: int
    d_ff: int
    num_layers: int
    per_layer_relpos: bool = False  # False: T5.1.1 (one shared table); True: UMT5 (one per layer)
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    dtype: jnp.dtype = jnp.float32  # activations and matmuls; norms and softmax stay float32
    param_dtype: jnp.dtype = jnp.float32  # storage of the weights


def t5_config(size: str, variant: str = "t5_1_1", dtype="float32", param_dtype="float32") -> T5Config:
    """The `size` preset (tiny, small, base, large, xl, xxl) of `variant` (t5_1_1 or umt5)."""
    if size not in SIZES:
        raise ValueError(f"unknown T5 encoder size {size!r}; choose one of {sorted(SIZES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown T5 variant {variant!r}; choose one of {VARIANTS}")
    d_model, num_heads, head_dim, d_ff, num_layers = SIZES[size]
    return T5Config(
        vocab_size=TINY_VOCAB if size == "tiny" else VOCAB_SIZES[variant],
        d_model=d_model,
        num_heads=num_heads,
        head_dim=head_dim,
        d_ff=d_ff,
        num_layers=num_layers,
        per_layer_relpos=variant == "umt5",
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.dtype(param_dtype),
    )


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[length, length] bucket of key position minus query position (bidirectional T5 scheme).

    Positive and negative offsets get half the buckets each; within a half, offsets below half
    of it are exact and larger ones are log-spaced up to `max_distance`, beyond which they
    share the last bucket. Computed in float32 with t5x's epsilon, which gives the same buckets
    as the Hugging Face implementation (tested). Built with numpy: the length is static, so
    the table is a compile-time constant.
    """
    position = np.arange(length)
    relative = position[None, :] - position[:, None]
    half = num_buckets // 2
    bucket = (relative > 0).astype(np.int32) * half
    distance = np.abs(relative)
    max_exact = half // 2
    scaled = np.log(distance.astype(np.float32) / max_exact + np.finfo(np.float32).eps)
    scaled = scaled / np.log(max_distance / max_exact) * (half - max_exact)
    large = np.minimum(max_exact + scaled.astype(np.int32), half - 1)
    return bucket + np.where(distance < max_exact, distance, large)


def _param(rngs: nnx.Rngs, init, shape, dtype, *names) -> nnx.Param:
    return nnx.Param(partitioned(init, *names)(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):
    """T5's layer norm: scale only, no mean subtraction, statistics in float32."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.scale = _param(rngs, nnx.initializers.ones, (config.d_model,), config.param_dtype, NORM)

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.config.eps)
        return y.astype(self.config.dtype) * self.scale[...].astype(self.config.dtype)


class RelativePositionBias(nnx.Module):
    """The learned [heads, buckets] table turned into a [1, heads, length, length] logit bias."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")
        self.rel_embedding = _param(
            rngs, init, (config.num_heads, config.num_buckets), config.param_dtype, HEADS, RELPOS
        )

    def __call__(self, length: int) -> jax.Array:
        buckets = relative_position_buckets(length, self.config.num_buckets, self.config.max_distance)
        return self.rel_embedding[...].astype(jnp.float32)[:, buckets][None]


class SelfAttention(nnx.Module):
    """Multi-head self-attention with an additive bias, no logit scaling, float32 softmax."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        d, h, k = config.d_model, config.num_heads, config.head_dim
        # t5x's initialisation, with the 1/sqrt(head_dim) of attention folded into the query.
        query_init = nnx.initializers.variance_scaling(1.0 / k, "fan_in", "normal", in_axis=0, out_axis=(1, 2))
        in_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2))
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2)
        self.query = _param(rngs, query_init, (d, h, k), config.param_dtype, EMBED, HEADS, KV)
        self.key = _param(rngs, in_init, (d, h, k), config.param_dtype, EMBED, HEADS, KV)
        self.value = _param(rngs, in_init, (d, h, k), config.param_dtype, EMBED, HEADS, KV)
        self.out = _param(rngs, out_init, (h, k, d), config.param_dtype, HEADS, KV, EMBED)

    def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array) -> jax.Array:
        """x [B, L, D], mask [B, 1, 1, L] (True where a key is a real token), bias [1, H, L, L]."""
        dtype = self.config.dtype
        q = jnp.einsum("bld,dhk->blhk", x, self.query[...].astype(dtype))
        k = jnp.einsum("bld,dhk->blhk", x, self.key[...].astype(dtype))
        v = jnp.einsum("bld,dhk->blhk", x, self.value[...].astype(dtype))
        logits = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) + bias
        # finfo.min rather than -inf: a row with no real key (an all-padding caption) stays finite.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(dtype)
        context = jnp.einsum("bhqs,bshk->bqhk", weights, v)
        return jnp.einsum("bqhk,hkd->bqd", context, self.out[...].astype(dtype))


class GatedGeluMlp(nnx.Module):
    """gelu_tanh(x W0) * (x W1), then Wo: T5.1.1's feed-forward block."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        d, f = config.d_model, config.d_ff
        self.wi_0 = _param(rngs, init, (d, f), config.param_dtype, EMBED, MLP)
        self.wi_1 = _param(rngs, init, (d, f), config.param_dtype, EMBED, MLP)
        self.wo = _param(rngs, init, (f, d), config.param_dtype, MLP, EMBED)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.config.dtype
        gate = jax.nn.gelu(x @ self.wi_0[...].astype(dtype), approximate=True)
        return (gate * (x @ self.wi_1[...].astype(dtype))) @ self.wo[...].astype(dtype)


class EncoderLayer(nnx.Module):
    """Pre-norm self-attention and MLP, each residual; owns a bias table only for UMT5."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.pre_attention_norm = RMSNorm(config, rngs=rngs)
        self.attention = SelfAttention(config, rngs=rngs)
        self.relpos = RelativePositionBias(config, rngs=rngs) if config.per_layer_relpos else None
        self.pre_mlp_norm = RMSNorm(config, rngs=rngs)
        self.mlp = GatedGeluMlp(config, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array, shared_bias: Optional[jax.Array]) -> jax.Array:
        bias = self.relpos(x.shape[1]) if self.relpos is not None else shared_bias
        x = x + self.attention(self.pre_attention_norm(x), mask, bias)
        return x + self.mlp(self.pre_mlp_norm(x))


class T5Encoder(nnx.Module):
    """Token ids [B, L] -> token embeddings [B, L, d_model] (the encoder's last hidden state)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.embedding = _param(
            rngs,
            nnx.initializers.normal(1.0),
            (config.vocab_size, config.d_model),
            config.param_dtype,
            VOCAB,
            EMBED,
        )
        self.relpos = None if config.per_layer_relpos else RelativePositionBias(config, rngs=rngs)
        self.layers = nnx.List([EncoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config, rngs=rngs)

    def __call__(self, tokens: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        """`mask` [B, L] marks real tokens; None derives it from the padding id 0.

        Padded positions still get outputs (they attend to the real tokens), exactly as in the
        reference implementations; consumers must use the mask.
        """
        if mask is None:
            mask = tokens != 0
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.config.dtype)
        key_mask = mask.astype(bool)[:, None, None, :]
        shared_bias = self.relpos(tokens.shape[1]) if self.relpos is not None else None
        for layer in self.layers:
            x = layer(x, key_mask, shared_bias)
        return self.final_norm(x)
