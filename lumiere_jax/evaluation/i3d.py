"""I3D (Inception-v1 inflated to 3-D, Kinetics-400): the network behind FVD, and its preprocessing.

The architecture is DeepMind's kinetics-i3d as exported to TF-Hub `deepmind/i3d-kinetics-400/1`,
which the FVD paper (Unterthiner et al. 2018) uses. FVD is only comparable across papers if the
features are that network's, computed the way its reference code computes them, so the details
that change numbers are kept exactly:

- TF "SAME" padding for every conv and max pool. For a stride-2 layer on an even size the total
  padding is odd and TF puts the extra element at the END (`tf_same_padding`); max pools pad
  with -inf, so padding never wins a max.
- Sonnet batch norm: (x - mean) / sqrt(var + 1e-3) * scale + offset with the stored statistics
  (inference only). The TF weights have no scale (it is 1); the pytorch-i3d weights have one, so
  every batch norm carries a scale.
- Head: AvgPool (2, 7, 7) stride 1 VALID over Mixed_5c, dropout (nothing at inference), a 1x1x1
  conv with bias to 400 logits, then the mean over the remaining time steps.

Outputs (see `I3D.__call__`): `logits`, the FVD paper's 400-d features, and `pool`, the 1024-d
average-pooled Mixed_5c features that the logits are a linear function of.

Input convention of `preprocess_for_i3d`: videos (B, T, H, W, 3) float in [0, 1]. It applies the
reference's TF1 "legacy" bilinear resize to 224x224 and maps to [-1, 1]; `I3D` takes its output.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

SIZE = 224  # the only spatial size the head's (2, 7, 7) VALID pool reduces to one position
MIN_FRAMES = 9  # fewer frames leave under 2 time steps at Mixed_5c, which the (2, 7, 7) pool needs
NUM_CLASSES = 400
BN_EPSILON = 1e-3  # Sonnet v1's default, used by the DeepMind model

# Inception modules: (name, input channels, (b0, b1a, b1b, b2a, b2b, b3b) output channels). The
# output width is b0 + b1b + b2b + b3b, the next module's input.
MIXED = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}
POOL_FEATURES = 1024  # Mixed_5c's output width

# The network as a sequence: a max pool (window, stride) before the named Inception modules.
POOL_BEFORE = {"Mixed_3b": ((1, 3, 3), (1, 2, 2)),  # MaxPool3d_3a_3x3
               "Mixed_4b": ((3, 3, 3), (2, 2, 2)),  # MaxPool3d_4a_3x3
               "Mixed_5b": ((2, 2, 2), (2, 2, 2))}  # MaxPool3d_5a_2x2


def tf_same_padding(sizes, window, strides) -> list[tuple[int, int]]:
    """TF's "SAME" (low, high) padding per axis: output ceil(n / s), extra padding at the end.

    lax's own "SAME" computes the same thing; spelling it out keeps the one detail FVD parity
    hinges on (odd total padding of a stride-2 layer goes after, not before) visible and tested.
    """
    pads = []
    for n, k, s in zip(sizes, window, strides):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def max_pool_same(x: jax.Array, window, strides) -> jax.Array:
    """3-D max pool over (T, H, W) of channels-last x with TF SAME padding by -inf."""
    pads = tf_same_padding(x.shape[1:4], window, strides)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1),
                             [(0, 0), *pads, (0, 0)])


def check_video_shape(shape, what: str, spatial: int | None = None) -> None:
    """ValueError unless `shape` is (B, T >= MIN_FRAMES, H, W, 3) (and H = W = `spatial` if given)."""
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"{what} takes videos shaped (batch, frames, height, width, 3); got {tuple(shape)}")
    if shape[1] < MIN_FRAMES:
        raise ValueError(f"{what} needs at least {MIN_FRAMES} frames per video (the network's time "
                         f"downsampling leaves too few steps for its (2, 7, 7) head pool); got {shape[1]} "
                         "frames: use longer clips (FVD's protocol uses 16)")
    if spatial is not None and tuple(shape[2:4]) != (spatial, spatial):
        raise ValueError(f"{what} takes {spatial}x{spatial} frames; got {shape[2]}x{shape[3]}: "
                         "resize with preprocess_for_i3d first")


class Unit3D(nnx.Module):
    """Conv3d (TF SAME, no bias) -> batch norm -> ReLU, the building block of every I3D layer.

    The logits layer is the exception: a conv with bias, no batch norm, no activation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel=(1, 1, 1), stride=(1, 1, 1), *,
                 logits: bool = False, precision=lax.Precision.HIGHEST, rngs: nnx.Rngs):
        fan_in = in_channels * math.prod(kernel)
        init = nnx.initializers.normal(stddev=math.sqrt(2.0 / fan_in))
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, in_channels, out_channels), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if logits else None
        self.bn = None if logits else nnx.BatchNorm(out_channels, use_running_average=True,
                                                    epsilon=BN_EPSILON, rngs=rngs)
        self.stride = tuple(stride)
        self.precision = precision

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        pads = tf_same_padding(x.shape[1:4], kernel.shape[:3], self.stride)
        y = lax.conv_general_dilated(x, kernel, self.stride, pads, precision=self.precision,
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
        if self.bias is not None:
            return y + self.bias[...]
        return jax.nn.relu(self.bn(y))


class InceptionModule(nnx.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3;
    3x3x3 max pool (stride 1) -> 1x1. Attribute names follow pytorch-i3d (b0, b1a, ...)."""

    def __init__(self, in_channels: int, widths, *, precision, rngs: nnx.Rngs):
        c0, c1a, c1b, c2a, c2b, c3b = widths
        unit = lambda i, o, k=(1, 1, 1): Unit3D(i, o, k, precision=precision, rngs=rngs)
        self.b0 = unit(in_channels, c0)
        self.b1a, self.b1b = unit(in_channels, c1a), unit(c1a, c1b, (3, 3, 3))
        self.b2a, self.b2b = unit(in_channels, c2a), unit(c2a, c2b, (3, 3, 3))
        self.b3b = unit(in_channels, c3b)

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = max_pool_same(x, (3, 3, 3), (1, 1, 1))
        return jnp.concatenate([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)],
                               axis=-1)


class I3D(nnx.Module):
    """The Kinetics-400 I3D network; inference only, float32, channels-last.

    `precision` is the conv precision; the default (HIGHEST) keeps float32 convolutions on
    accelerators whose default would round inputs to bfloat16, since metric features must not
    depend on the device they were computed on.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, *, precision=lax.Precision.HIGHEST, rngs: nnx.Rngs):
        unit = lambda i, o, k, s=(1, 1, 1): Unit3D(i, o, k, s, precision=precision, rngs=rngs)
        self.Conv3d_1a_7x7 = unit(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = unit(64, 64, (1, 1, 1))
        self.Conv3d_2c_3x3 = unit(64, 192, (3, 3, 3))
        for name, (in_channels, widths) in MIXED.items():
            setattr(self, name, InceptionModule(in_channels, widths, precision=precision, rngs=rngs))
        self.Logits = Unit3D(POOL_FEATURES, num_classes, logits=True, precision=precision, rngs=rngs)

    def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
        """x: (B, T >= 9, 224, 224, 3) in [-1, 1] (see `preprocess_for_i3d`).

        Returns {'logits': (B, num_classes), 'pool': (B, 1024)}:
        - logits: the Logits conv applied at every time step left after the head's pool, then
          averaged over time. These are the FVD paper's I3D features (TF-Hub's output).
        - pool: AvgPool3D(window (2, 7, 7), stride 1, VALID) of Mixed_5c, then the mean over the
          remaining time steps (at 224x224 one spatial position remains). Because the Logits
          conv is linear, logits = pool @ W + b exactly. Note it is not the plain mean of
          Mixed_5c when more than one 2-frame window remains (T >= 17): overlapping windows
          weight inner frames more, exactly as the logits do.
        """
        check_video_shape(x.shape, "I3D", spatial=SIZE)
        x = self.Conv3d_1a_7x7(x)
        x = max_pool_same(x, (1, 3, 3), (1, 2, 2))  # MaxPool3d_2a_3x3
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        for name in MIXED:
            if name in POOL_BEFORE:
                x = max_pool_same(x, *POOL_BEFORE[name])
            x = getattr(self, name)(x)
        window = (1, 2, 7, 7, 1)
        pooled = lax.reduce_window(x, 0.0, lax.add, window, (1,) * 5, "VALID") / math.prod(window)
        logits = self.Logits(pooled)  # dropout sits here in training; at inference it is the identity
        return {"logits": logits.mean(axis=(1, 2, 3)), "pool": pooled.mean(axis=(1, 2, 3))}


def legacy_bilinear_weights(in_size: int, out_size: int):
    """(lower index, upper index, upper weight) per output position of TF1's legacy bilinear resize.

    tf.image.resize_bilinear(align_corners=False) before half_pixel_centers existed samples
    source position dst * in / out (no half-pixel offset), clamping the upper neighbour at the
    edge. jax.image.resize uses half-pixel centres, which gives different FVD features.
    """
    src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lower = np.floor(src).astype(np.int32)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (src - lower).astype(np.float32)


def _resize_axis(x: jax.Array, axis: int, out_size: int) -> jax.Array:
    lower, upper, frac = legacy_bilinear_weights(x.shape[axis], out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    frac = jnp.asarray(frac).reshape(shape)
    low, high = jnp.take(x, lower, axis=axis), jnp.take(x, upper, axis=axis)
    return low + (high - low) * frac


def preprocess_for_i3d(videos: jax.Array, size: int = SIZE) -> jax.Array:
    """(B, T, H, W, 3) float in [0, 1] -> (B, T, size, size, 3) in [-1, 1], as the FVD reference.

    Frames are resized with TF1's legacy bilinear resize (`legacy_bilinear_weights`; no
    antialiasing, as the reference) and scaled by 2x - 1 (the reference's 2x/255 - 1 on uint8).
    Pure jnp on static shapes, so it runs inside a jitted, sharded program.
    """
    check_video_shape(videos.shape, "preprocess_for_i3d")
    if not jnp.issubdtype(videos.dtype, jnp.floating):
        raise ValueError(f"preprocess_for_i3d takes float videos in [0, 1]; got dtype {videos.dtype} "
                         "(divide uint8 frames by 255)")
    x = jnp.asarray(videos, jnp.float32)
    x = _resize_axis(_resize_axis(x, 2, size), 3, size)
    return 2.0 * x - 1.0
