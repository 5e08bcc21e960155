"""Text-to-video generation with a model: guidance, sampler and schedule from the config.

The same function serves the trainer's periodic previews and the sampling jobs; it is pure and
jittable (the model is an NNX module traced with it).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from lumiere_jax import diffusion


def generate(model, text: jax.Array, text_mask: jax.Array, rng: jax.Array, shape: tuple, config,
             num_steps: int | None = None) -> jax.Array:
    """Samples videos of `shape` (B, T, H, W, C) in [-1, 1] for the text conditioning (B, L, D), (B, L)."""
    schedule = diffusion.schedule_from_config(config.diffusion)
    parameterization = diffusion.parameterization_from_config(config.diffusion)
    settings = diffusion.sampler_settings_from_config(config.sample)
    if num_steps is not None:
        settings = dataclasses.replace(settings, num_steps=num_steps)
    cond = {"text": text, "mask": text_mask}

    def model_fn(z, logsnr, c):
        return model(z, logsnr, c["text"], c["mask"])

    predict = diffusion.classifier_free_guidance(model_fn, cond, diffusion.null_text_conditioning(cond),
                                                 settings.guidance_scale)
    noise_rng, sample_rng = jax.random.split(rng)
    noise = jax.random.normal(noise_rng, shape, jnp.float32)
    return jnp.clip(diffusion.sample(predict, noise, sample_rng, schedule, settings, parameterization=parameterization),
                    -1.0, 1.0)
