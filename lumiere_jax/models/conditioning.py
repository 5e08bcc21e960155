"""Assembling the U-Net's inputs from a conditioning dict, shared by the trainer and the sampler.

`cond` holds `text` (B, L, D) and `mask` (B, L); for SSR also `lowres` (B, T, H, W, 3), the
low-resolution clip upsampled to the output size (joined to the noisy clip as channels), and
`aug` (B,), the log-SNR of the augmentation noise it carries; for the conditional tasks `known`
(B, T, H, W, 4), the masked clip and its mask (lumiere_jax.sample.masks.known_input), joined the
same way.
"""
import jax
import jax.numpy as jnp

FRAME_KEYS = ("lowres", "known")  # conditioning with a frame axis, joined to the noisy clip as channels


def call_model(model, z, logsnr, cond: dict, image_mode: bool = False):
    extra = [cond[key].astype(z.dtype) for key in FRAME_KEYS if key in cond]
    x = jnp.concatenate([z, *extra], axis=-1) if extra else z
    return model(x, logsnr, cond["text"], cond["mask"], image_mode=image_mode, aug_logsnr=cond.get("aug"))


def upsample(video: jax.Array, size: int) -> jax.Array:
    """(B, T, h, w, C) -> (B, T, size, size, C), bilinear: how SSR sees its low-resolution input."""
    b, t, _, _, c = video.shape
    return jax.image.resize(video, (b, t, size, size, c), method="bilinear")
