"""The conditional tasks' input ⟨C, M⟩ and the mask shapes both training and sampling build it from.

Lumiere's conditional model (paper section 4) reads the noisy clip J joined with a masked
conditioning clip C and a binary mask M (1 = known pixel), 7 channels in all. The layout of the
last 4 channels, `known_input`, is defined here once: the trainer's random mask mix
(`lumiere_jax.train.mask_mix`) and the sampling tasks (`lumiere_jax.sample.tasks`) both call it,
so the model is sampled with exactly what it was trained on. C is the clip where M is 1 and 0
(mid-grey in [-1, 1]) elsewhere.

The shape functions are plain jnp, so they run inside the jitted train step with traced
positions and sizes, and on the host for the sampling job alike. Coordinates are pixels of the
frame the model sees (x to the right, y down, half-open ranges), times are frame indices.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KNOWN_CHANNELS = 4  # C (3) + M (1): what model.conditioning_channels must be for the conditional tasks


def known_input(video: jax.Array, mask: jax.Array) -> jax.Array:
    """(..., T, H, W, 3) clip and (..., T, H, W) mask (1 = known) -> (..., T, H, W, 4) = ⟨M·video, M⟩."""
    m = mask.astype(jnp.float32)[..., None]
    return jnp.concatenate([video.astype(jnp.float32) * m, m], axis=-1)


def split_known(known: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The inverse of `known_input`: (C (..., 3), M (..., T, H, W))."""
    return known[..., :3], known[..., 3]


def box_region(height: int, width: int, x0, y0, x1, y1) -> jax.Array:
    """(H, W) float, 1 on the pixels of [x0, x1) x [y0, y1) (pixel centres at k + 0.5)."""
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
    return ((xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)).astype(jnp.float32)


def frame_span(num_frames: int, t0, t1) -> jax.Array:
    """(T,) float, 1 on frames t0 <= t < t1."""
    t = jnp.arange(num_frames)
    return ((t >= t0) & (t < t1)).astype(jnp.float32)


def first_frames(num_frames: int, height: int, width: int, count) -> jax.Array:
    """Image-to-video: (T, H, W) mask known on the first `count` frames."""
    return jnp.broadcast_to(frame_span(num_frames, 0, count)[:, None, None], (num_frames, height, width))


def fill_region(region: jax.Array, span: jax.Array) -> jax.Array:
    """Inpainting: the (T, H, W) known mask of a region (H, W) to fill on the frames of `span` (T,)."""
    return 1.0 - span[:, None, None] * region[None]


def keep_inside(num_frames: int, height: int, width: int, top, right, bottom, left) -> jax.Array:
    """Outpainting: (T, H, W) mask known inside the frame minus the given border widths (pixels)."""
    inside = box_region(height, width, left, top, width - right, height - bottom)
    return jnp.broadcast_to(inside[None], (num_frames, height, width))


def cinemagraph(image: jax.Array, region: jax.Array, num_frames: int) -> tuple[jax.Array, jax.Array]:
    """Cinemagraph from a still (H, W, 3) and the (H, W) region that moves.

    Returns the clip the known mask refers to (the still on every frame) and that mask: known on
    all of frame 0 and outside the region on every frame, so only the region is generated.
    """
    clip = jnp.broadcast_to(image[None], (num_frames,) + image.shape)
    mask = jnp.broadcast_to(1.0 - region[None], (num_frames,) + region.shape)
    return clip, mask.at[0].set(1.0)


def cinemagraph_target(video: jax.Array, region: jax.Array) -> jax.Array:
    """The training clip of a cinemagraph made from a real clip (T, H, W, 3): its motion inside the
    (H, W) region, its first frame frozen outside."""
    inside = region[None, :, :, None]
    return inside * video + (1.0 - inside) * video[:1]
