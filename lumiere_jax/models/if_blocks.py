"""The two blocks of the `deepfloyd_if` block set that have no Imagen-style counterpart.

DeepFloyd IF (stage I and II) is a pixel-space U-Net on frozen T5-XXL embeddings, like Imagen,
but it reads the text differently (DESIGN.md section 6):
- `AddedKVAttention`: each spatial attention layer group-normalises the text tokens with its own
  GroupNorm (statistics over the tokens and the channels of a group) and projects them to extra
  keys/values; the image tokens' own keys/values join them unless the layer is text-only (IF-II);
- `AttentionPooledText`: the text's contribution to the embedding that modulates every res block
  is an attention pooling of the raw T5 tokens (query = their mean plus a learned position).
The res blocks (exact GELU, resampling res blocks, output scaling) are `layers.ResBlock` options.
Parameter names follow ours; `models.diffusers_if` maps the diffusers checkpoint names onto them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models.attention import attention
from lumiere_jax.models.layers import GroupNorm, LayerNorm, dense
from lumiere_jax.parallel import axes
from lumiere_jax.parallel.axes import partitioned

TEXT_NORM_GROUPS = 32  # diffusers' Attention(cross_attention_norm="group_norm") default


class AddedKVAttention(nnx.Module):
    """Attention over the H*W tokens of each frame with the text as added keys/values.

    Keys are [text tokens, image tokens] (only the text tokens with `self_attention=False`); the
    order of keys does not change attention, so ours puts the image tokens first like
    `SpatialAttention`. The mask applies to the text tokens; DeepFloyd IF was trained without
    one (every token attended), which the IF text conventions reproduce with an all-ones mask.
    """

    def __init__(self, channels: int, text_channels: int, head_dim: int, groups: int, rngs: nnx.Rngs,
                 dtype=jnp.float32, implementation: str = "xla", *, self_attention: bool = True):
        self.heads, self.head_dim, self.implementation = channels // head_dim, head_dim, implementation
        self.norm = GroupNorm(channels, groups, rngs, dtype)
        self.text_norm = GroupNorm(text_channels, TEXT_NORM_GROUPS, rngs, dtype)
        self.q = dense(channels, channels, rngs, dtype=dtype)
        self.k = dense(channels, channels, rngs, dtype=dtype) if self_attention else None
        self.v = dense(channels, channels, rngs, dtype=dtype) if self_attention else None
        self.text_k = dense(text_channels, channels, rngs, dtype=dtype)
        self.text_v = dense(text_channels, channels, rngs, dtype=dtype)
        self.out = dense(channels, channels, rngs, dtype=dtype, in_axis=axes.MLP, out_axis=axes.EMBED)

    def __call__(self, x, text, text_mask):
        """x (N, H, W, C); text (N, L, text_channels) and text_mask (N, L) already per frame."""
        n, h, w, c = x.shape
        tokens = self.norm(x).reshape(n, h * w, c)
        text = self.text_norm(text)
        k, v, keep = self.text_k(text), self.text_v(text), text_mask.astype(bool)
        if self.k is not None:
            k = jnp.concatenate([self.k(tokens), k], axis=1)
            v = jnp.concatenate([self.v(tokens), v], axis=1)
            keep = jnp.concatenate([jnp.ones((n, h * w), bool), keep], axis=1)
        heads = lambda a: a.reshape(n, a.shape[1], self.heads, self.head_dim)  # noqa: E731
        out = attention(heads(self.q(tokens)), heads(k), heads(v), mask=keep[:, None, None, :],
                        implementation=self.implementation)
        return x + self.out(out.reshape(n, h * w, c)).reshape(n, h, w, c)


class AttentionPooledText(nnx.Module):
    """T5 tokens (N, L, D) -> (N, emb_dim): LayerNorm, attention pooling, dense, LayerNorm.

    The pooling query is one class token, the (masked) mean of the tokens plus a learned position;
    it attends over [class token, tokens] with `heads` heads, whose outputs are concatenated.
    """

    def __init__(self, text_dim: int, emb_dim: int, heads: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.heads = heads
        self.norm1 = LayerNorm(text_dim, rngs, dtype)
        init = partitioned(nnx.initializers.normal(text_dim**-0.5), axes.NORM)
        self.position = nnx.Param(init(rngs.params(), (text_dim,)))
        self.q = dense(text_dim, text_dim, rngs, dtype=dtype)
        self.k = dense(text_dim, text_dim, rngs, dtype=dtype)
        self.v = dense(text_dim, text_dim, rngs, dtype=dtype)
        self.proj = dense(text_dim, emb_dim, rngs, dtype=dtype, out_axis=axes.EMBED, in_axis=axes.MLP)
        self.norm2 = LayerNorm(emb_dim, rngs, dtype)

    def __call__(self, text: jax.Array, mask: jax.Array) -> jax.Array:
        n, _, d = text.shape
        x = self.norm1(text)
        keep = mask.astype(x.dtype)[..., None]
        cls = (x * keep).sum(1) / jnp.maximum(keep.sum(1), 1.0) + self.position[...].astype(x.dtype)
        tokens = jnp.concatenate([cls[:, None], x], axis=1)
        heads = lambda a: a.reshape(n, a.shape[1], self.heads, d // self.heads)  # noqa: E731
        attend = jnp.concatenate([jnp.ones((n, 1), bool), mask.astype(bool)], axis=1)
        pooled = attention(heads(self.q(cls[:, None])), heads(self.k(tokens)), heads(self.v(tokens)),
                           mask=attend[:, None, None, :])
        return self.norm2(self.proj(pooled.reshape(n, d)))
