"""Other ways to express the STUNet's memory-bound pieces, for `block_costs.py --variants=...`.

Each variant swaps one implementation detail of lumiere_jax.models in place (same parameters, same
function) so that the TPU compiler's estimate of the same block can be compared one choice at a time.
They were measured and not adopted (README, "Scale"), or are the form a faster default replaced; they
live here so that the comparison can be re-run.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models import layers, temporal


def _group_stats(x, groups):
    """Per-(sample, group) mean and variance in float32, E[x^2] - E[x]^2 in one pass."""
    n, c = x.shape[0], x.shape[-1]
    xg = x.reshape(n, -1, groups, c // groups)
    mean = jnp.mean(xg, axis=(1, 3), dtype=jnp.float32)
    var = jnp.maximum(jnp.mean(jnp.square(xg.astype(jnp.float32)), axis=(1, 3)) - jnp.square(mean), 0.0)
    return mean, var


def _affine(x, mean, var, scale, bias, groups):
    """GroupNorm as one multiply-add per element: y = x * a + b with per-(sample, channel) a, b."""
    n, c = x.shape[0], x.shape[-1]
    rstd = jax.lax.rsqrt(var + 1e-5)[:, :, None]
    a = rstd * scale.reshape(groups, c // groups)
    b = bias.reshape(groups, c // groups) - mean[:, :, None] * a
    shape = (n,) + (1,) * (x.ndim - 2) + (c,)
    return a.reshape(shape), b.reshape(shape)


def norm_bf16_apply():
    """Statistics in float32, the normalisation applied in the compute dtype (bf16)."""
    def call(self, x):
        g = self.norm.num_groups
        a, b = _affine(x, *_group_stats(x, g), self.norm.scale[...], self.norm.bias[...], g)
        return (x * a.astype(x.dtype) + b.astype(x.dtype)).astype(self.dtype)
    layers.GroupNorm.__call__ = call


def norm_fused_vjp():
    """GroupNorm with a hand-written backward pass: one reduction and one elementwise pass over the input."""
    @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
    def group_norm(x, scale, bias, groups):
        return forward(x, scale, bias, groups)[0]

    def forward(x, scale, bias, groups):
        mean, var = _group_stats(x, groups)
        a, b = _affine(x, mean, var, scale, bias, groups)
        return (x.astype(jnp.float32) * a + b).astype(x.dtype), (x, mean, jax.lax.rsqrt(var + 1e-5), scale)

    def backward(groups, residuals, dy):
        x, mean, rstd, scale = residuals
        n, c = x.shape[0], x.shape[-1]
        xg = x.reshape(n, -1, groups, c // groups).astype(jnp.float32)
        dyg = dy.reshape(xg.shape).astype(jnp.float32)
        xhat = (xg - mean[:, None, :, None]) * rstd[:, None, :, None]
        g = dyg * scale.reshape(groups, c // groups)
        dx = rstd[:, None, :, None] * (g - g.mean(axis=(1, 3), keepdims=True)
                                       - xhat * (g * xhat).mean(axis=(1, 3), keepdims=True))
        return (dx.astype(x.dtype).reshape(x.shape), jnp.sum(dyg * xhat, axis=(0, 1)).reshape(c),
                jnp.sum(dyg, axis=(0, 1)).reshape(c))

    group_norm.defvjp(forward, backward)
    layers.GroupNorm.__call__ = lambda self, x: group_norm(
        x, self.norm.scale[...], self.norm.bias[...], self.norm.num_groups).astype(self.dtype)


class _TemporalConv(nnx.Module):
    """A temporal conv's parameters (an nnx.Conv's) applied by another formulation `apply`."""

    def __init__(self, inner: nnx.Conv, strides: int, apply):
        self.inner, self.strides, self.apply = inner, strides, apply

    def __call__(self, x):
        kernel = self.inner.kernel[...].astype(x.dtype)[:, 0, 0]  # (k, C_in, C_out)
        return self.apply(x, kernel, self.strides) + self.inner.bias[...].astype(x.dtype)


def _swap_temporal_conv(apply):
    """The conv blocks' and the temporal downsampling's convolutions computed by `apply`; the temporal
    upsampling keeps its own form (`upsample_conv`, compared by `upsample_repeat_then_conv`)."""
    original = temporal.temporal_conv

    def make(channels, kernel, rngs, *, dtype, kernel_init, strides=1, **kw):
        inner = original(channels, kernel, rngs, dtype=dtype, kernel_init=kernel_init, strides=strides, **kw)
        return _TemporalConv(inner, strides, apply)

    def upsample_init(self, channels, kernel, rngs, dtype=jnp.float32):
        self.conv = original(channels, kernel, rngs, dtype=dtype, kernel_init=temporal.identity_kernel)

    temporal.temporal_conv = make
    temporal.TemporalUpsample.__init__ = upsample_init


def _pad_time(x, p):
    return jnp.pad(x, ((0, 0), (p, p)) + ((0, 0),) * (x.ndim - 2))


def conv_positions_as_batch():
    """(B, T, H*W, C) with the H*W positions as the convolution's batch dimension: no transposes."""
    def apply(x, k, s):
        b, t, h, w, c = x.shape
        p = k.shape[0] // 2
        y = jax.lax.conv_general_dilated(x.reshape(b, t, h * w, c), k[None], (1, s), ((0, 0), (p, p)),
                                         dimension_numbers=("HWNC", "HWIO", "HWNC"))
        return y.reshape(b, -1, h, w, y.shape[-1])
    _swap_temporal_conv(apply)


def conv_frames_innermost():
    """A 1-D convolution over (B*H*W, T, C): frames moved next to the channels and back."""
    def apply(x, k, s):
        b, t, h, w, c = x.shape
        p = k.shape[0] // 2
        xt = jnp.transpose(x, (0, 2, 3, 1, 4)).reshape(b * h * w, t, c)
        y = jax.lax.conv_general_dilated(xt, k, (s,), ((p, p),), dimension_numbers=("NWC", "WIO", "NWC"))
        return jnp.transpose(y.reshape(b, h, w, -1, y.shape[-1]), (0, 3, 1, 2, 4))
    _swap_temporal_conv(apply)


def conv_shifted_matmuls():
    """The sum over kernel taps of a matmul of the frames shifted by that tap."""
    def apply(x, k, s):
        t, p = x.shape[1], k.shape[0] // 2
        xp = _pad_time(x, p)
        return sum(jnp.einsum("bthwc,cd->bthwd", xp[:, i:i + t], k[i]) for i in range(k.shape[0]))[:, ::s]
    _swap_temporal_conv(apply)


def conv_stacked_matmul():
    """One matmul of each frame's channels stacked with its neighbours' (im2col over time)."""
    def apply(x, k, s):
        t, p = x.shape[1], k.shape[0] // 2
        xp = _pad_time(x, p)
        cols = jnp.concatenate([xp[:, i:i + t:s] for i in range(k.shape[0])], axis=-1)
        return jnp.einsum("bthwc,cd->bthwd", cols, k.reshape(-1, k.shape[-1]))
    _swap_temporal_conv(apply)


def upsample_repeat_then_conv():
    """The upsamplings as written in the paper: repeat the input 2x, then convolve (before `upsample_conv`)."""
    layers.Upsample.__call__ = lambda self, x, emb=None: self.conv(layers.resample(x, "up"))
    temporal.TemporalUpsample.__call__ = lambda self, x: self.conv(jnp.repeat(x, 2, axis=1))


VARIANTS = {
    "default": lambda: None,
    "norm_bf16_apply": norm_bf16_apply,
    "norm_fused_vjp": norm_fused_vjp,
    "conv_positions_as_batch": conv_positions_as_batch,
    "conv_frames_innermost": conv_frames_innermost,
    "conv_shifted_matmuls": conv_shifted_matmuls,
    "conv_stacked_matmul": conv_stacked_matmul,
    "upsample_repeat_then_conv": upsample_repeat_then_conv,
}
