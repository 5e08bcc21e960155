"""Assembling the U-Net's inputs from a conditioning dict, shared by the trainer and the sampler.

`cond` holds `text` (B, L, D) and `mask` (B, L); for SSR also `lowres` (B, T, H, W, 3), the
low-resolution clip upsampled to the output size (joined to the noisy clip as channels), and
`aug` (B,), the log-SNR of the augmentation noise it carries; for the conditional tasks `known`
(B, T, H, W, 4), the masked clip and its mask (lumiere_jax.sample.masks.known_input), joined the
same way. `frame_start` (B,), where present, is the first frame of each row's window in a longer
clip, for a model with model.temporal.frame_position='global' (MultiDiffusion and the trainer add it).
"""
import jax
import jax.numpy as jnp

FRAME_KEYS = ("lowres", "known")  # conditioning with a frame axis, joined to the noisy clip as channels


def call_model(model, z, logsnr, cond: dict, image_mode: bool = False):
    """The model's prediction for noisy `z`, shaped like `z`.

    A model with `learned_variance` (DeepFloyd IF) also outputs its variance channels; our
    samplers and losses use the prediction only, so they are dropped here.
    """
    extra = [cond[key].astype(z.dtype) for key in FRAME_KEYS if key in cond]
    x = jnp.concatenate([z, *extra], axis=-1) if extra else z
    out = model(x, logsnr, cond["text"], cond["mask"], image_mode=image_mode, aug_logsnr=cond.get("aug"),
                frame_start=cond.get("frame_start"))
    return out[..., : z.shape[-1]] if model.cfg.learned_variance else out


def upsample(video: jax.Array, size: int, align_corners: bool = False) -> jax.Array:
    """(B, T, h, w, C) -> (B, T, size, size, C), bilinear: how SSR sees its low-resolution input.

    `align_corners=True` (`model.lowres_align_corners`) maps the corner pixels onto each other,
    source position i (h - 1) / (size - 1), as DeepFloyd IF-II's pipeline upsamples
    (torch's `interpolate(..., align_corners=True)`); False is jax's half-pixel convention.
    """
    b, t, _, _, c = video.shape
    if not align_corners:
        return jax.image.resize(video, (b, t, size, size, c), method="bilinear")
    for axis in (2, 3):
        video = _lerp_corners(video, axis, size)
    return video


def _lerp_corners(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Linear interpolation along `axis` to `size` samples with the end samples aligned."""
    n = x.shape[axis]
    pos = jnp.arange(size, dtype=jnp.float32) * ((n - 1) / max(size - 1, 1))
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, n - 1)
    hi = jnp.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[axis] = size
    frac = (pos - lo).reshape(shape).astype(x.dtype)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac
