"""The temporal modules that inflate a T2I U-Net into a Space-Time U-Net (Lumiere, appendix B).

Every module here is the identity at initialisation, so a freshly inflated STUNet computes
exactly what the pre-trained T2I U-Net computes on each frame (up to the frame subsampling and
duplication of the temporal down/upsampling). All work on videos laid out (B, T, H, W, C).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models.attention import attention
from lumiere_jax.models.layers import (
    GroupNorm, LayerNorm, conv, default_kernel, dense, sinusoidal_features, upsample_conv, zeros,
)
from lumiere_jax.parallel import axes
from lumiere_jax.parallel.axes import partitioned


def identity_kernel(key, shape, dtype=jnp.float32):
    """A (k, 1, 1, C, C) temporal kernel that copies its centre frame: the paper's identity init."""
    del key
    k, _, _, c_in, c_out = shape
    if c_in != c_out or k % 2 == 0:
        raise ValueError(f"identity kernel needs an odd width and c_in == c_out, got shape {shape}")
    return jnp.zeros(shape, dtype).at[k // 2, 0, 0].set(jnp.eye(c_in, dtype=dtype))


def temporal_conv(channels, kernel, rngs, *, dtype, kernel_init, strides=1, out_axis=axes.MLP, in_axis=axes.EMBED):
    """A (kernel x 1 x 1) convolution over the frame axis of (B, T, H, W, C), zero-padded in time."""
    pad = kernel // 2
    return conv(channels, channels, (kernel, 1, 1), rngs, strides=(strides, 1, 1),
                padding=((pad, pad), (0, 0), (0, 0)), dtype=dtype, kernel_init=kernel_init,
                in_axis=in_axis, out_axis=out_axis)


class TemporalConvBlock(nnx.Module):
    """The temporal half of a factorized space-time conv block: a residual 1-D conv stack over time.

    The output conv is zero-initialised, so the block is the identity at init. With `emb_dim` the
    hidden activations take a scale/shift from the per-frame embedding (noise level, pooled text,
    frame embedding), as the spatial res blocks do: what a temporal filter should carry from frame
    to frame then depends on the caption ("moving left") and on how noisy the clip still is.
    """

    def __init__(self, channels: int, kernel: int, groups: int, rngs: nnx.Rngs, dtype=jnp.float32,
                 emb_dim: Optional[int] = None):
        self.norm1 = GroupNorm(channels, groups, rngs, dtype)
        self.conv1 = temporal_conv(channels, kernel, rngs, dtype=dtype, kernel_init=default_kernel)
        self.norm2 = GroupNorm(channels, groups, rngs, dtype)
        self.emb_proj = dense(emb_dim, 2 * channels, rngs, dtype=dtype) if emb_dim else None
        self.conv2 = temporal_conv(channels, kernel, rngs, dtype=dtype, kernel_init=zeros,
                                   in_axis=axes.MLP, out_axis=axes.EMBED)

    def __call__(self, x, emb=None):
        """x (B, T, H, W, C); emb (B, T, emb_dim), used when the block was built with `emb_dim`."""
        h = self.norm2(self.conv1(jax.nn.silu(self.norm1(x))))
        if self.emb_proj is not None:
            scale, shift = jnp.split(self.emb_proj(jax.nn.silu(emb))[:, :, None, None, :], 2, axis=-1)
            h = h * (1 + scale) + shift
        return x + self.conv2(jax.nn.silu(h))


class TemporalDownsample(nnx.Module):
    """Identity-initialised temporal conv followed by a stride of 2: `x[:, ::2]` at init."""

    def __init__(self, channels: int, kernel: int, rngs: nnx.Rngs, dtype=jnp.float32):
        # Explicit symmetric padding keeps output frame i centred on input frame 2i; XLA's 'SAME'
        # with stride 2 would centre it on 2i+1 and the identity init would give x[:, 1::2].
        self.conv = temporal_conv(channels, kernel, rngs, strides=2, dtype=dtype, kernel_init=identity_kernel)

    def __call__(self, x):
        return self.conv(x)


class TemporalUpsample(nnx.Module):
    """Frame duplication followed by an identity-initialised temporal conv: `repeat(x, 2, 1)` at init.

    Computed in two phases at the input's frame rate (`upsample_conv`): the same function, without
    forming the duplicated frames.
    """

    def __init__(self, channels: int, kernel: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.conv = temporal_conv(channels, kernel, rngs, dtype=dtype, kernel_init=identity_kernel)

    def __call__(self, x):
        return upsample_conv(self.conv, x, axes=(1,))


class RelativePositionBias(nnx.Module):
    """A learned per-head bias on the frame offset j - i, clipped to +-max_distance.

    Attention over frames is permutation-equivariant; this gives it the order of the frames while
    staying translation-invariant, so windows of any position in a longer clip look alike.
    """

    def __init__(self, heads: int, max_distance: int, rngs: nnx.Rngs):
        self.max_distance = max_distance
        init = partitioned(nnx.initializers.normal(0.02), axes.RELPOS, axes.HEADS)
        self.table = nnx.Param(init(rngs.params(), (2 * max_distance + 1, heads)))

    def __call__(self, frames: int) -> jax.Array:
        pos = jnp.arange(frames)
        offset = jnp.clip(pos[None, :] - pos[:, None], -self.max_distance, self.max_distance) + self.max_distance
        return jnp.transpose(self.table[...][offset], (2, 0, 1))[None]  # (1, heads, T, T)


class TemporalAttention(nnx.Module):
    """One transformer layer over the frame axis (spatial positions folded into the batch).

    Both residual branches end in a zero-initialised projection, so the layer is the identity at init.
    """

    def __init__(self, channels: int, head_dim: int, max_distance: int, rngs: nnx.Rngs, dtype=jnp.float32,
                 implementation: str = "xla"):
        self.heads = channels // head_dim
        self.head_dim = head_dim
        self.implementation = implementation
        self.norm = LayerNorm(channels, rngs, dtype)
        self.qkv = dense(channels, 3 * channels, rngs, dtype=dtype)
        self.position = RelativePositionBias(self.heads, max_distance, rngs)
        self.out = dense(channels, channels, rngs, dtype=dtype, kernel_init=zeros, in_axis=axes.MLP, out_axis=axes.EMBED)
        self.mlp_norm = LayerNorm(channels, rngs, dtype)
        self.mlp_in = dense(channels, 4 * channels, rngs, dtype=dtype)
        self.mlp_out = dense(4 * channels, channels, rngs, dtype=dtype, kernel_init=zeros,
                             in_axis=axes.MLP, out_axis=axes.EMBED)

    def __call__(self, x):
        b, t, h, w, c = x.shape
        tokens = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b * h * w, t, c)
        q, k, v = jnp.split(self.qkv(self.norm(tokens)), 3, axis=-1)
        heads = lambda a: a.reshape(b * h * w, t, self.heads, self.head_dim)  # noqa: E731
        out = attention(heads(q), heads(k), heads(v), bias=self.position(t), implementation=self.implementation)
        tokens = tokens + self.out(out.reshape(b * h * w, t, c))
        tokens = tokens + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(tokens))))
        return jnp.transpose(tokens.reshape(b, h, w, t, c), (0, 3, 1, 2, 4))


FRAME_POSITIONS = ("clip", "global")


class FrameEmbedding(nnx.Module):
    """Each frame's place in the clip, read together with the pooled caption: a per-frame term of
    the embedding that modulates the res blocks (and conditioned temporal convs) of that frame.

    The temporal convs and the relative-position attention are translation-invariant in time, so
    without it a frame can only learn where it sits from the zero padding at the clip's ends. A
    caption's direction of motion is a statement about where the object is early versus late in
    the clip, i.e. about (position in clip) x (words); the hidden layer sees both, so that product
    is one layer away instead of having to emerge deep inside the U-Net. Positions (`positions`)
    are in units of the model's input length, at the centres of the frames a level pools, so a
    temporally downsampled level sees where its frames sit. The output layer is zero-initialised:
    the inflated STUNet still equals the T2I U-Net per frame at init.
    """

    def __init__(self, channels: int, text_channels: int, emb_dim: int, rngs: nnx.Rngs, dtype=jnp.float32):
        self.channels = channels
        self.position = dense(channels, emb_dim, rngs, dtype=dtype)
        # Input unsharded: both axes named MLP would map one mesh axis twice; the weight is small.
        self.text = dense(text_channels, emb_dim, rngs, dtype=dtype, in_axis=None)
        self.out = dense(emb_dim, emb_dim, rngs, dtype=dtype, kernel_init=zeros, in_axis=axes.MLP, out_axis=axes.EMBED)

    @staticmethod
    def positions(frames: int, clip_frames: int, start: Optional[jax.Array] = None) -> jax.Array:
        """The places of a level's `frames` frames, (1, frames) or (B, frames) with `start`.

        Without `start` (model.temporal.frame_position='clip'): (j + 0.5) / frames, counted from the
        model's input, whatever clip it was cut from. With `start` (B,) ('global'), the first frame
        of the input in a longer clip: start / clip_frames + (j + 0.5) / frames, i.e. the centre of
        the input frames level frame j pools, start + f (j + 0.5) at downsampling f = clip_frames /
        frames, in units of the input length: a frame of a long clip gets the same position in
        every window that holds it, and start 0 gives the 'clip' positions exactly. Positions past
        1 are what the sinusoid features are for: at sinusoidal_features' lowest frequency
        (1000 t x 1e-4 rad) they stay distinct up to t = 2 pi x 10, about 60 training lengths.
        """
        local = (jnp.arange(frames, dtype=jnp.float32) + 0.5) / frames
        if start is None:
            return local[None]
        return jnp.asarray(start, jnp.float32)[:, None] / clip_frames + local[None]

    def __call__(self, pooled_text: jax.Array, positions) -> jax.Array:
        """pooled_text (B, text_channels), positions (1 or B, frames) from `positions`, or a frame count
        (a whole clip's own positions) -> (B, frames, emb_dim)."""
        if isinstance(positions, int):
            positions = self.positions(positions, positions)
        features = sinusoidal_features(positions.reshape(-1), self.channels).astype(self.position.dtype)
        hidden = self.position(features).reshape(*positions.shape, -1) + self.text(pooled_text)[:, None]
        return self.out(jax.nn.silu(hidden))
