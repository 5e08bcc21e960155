"""Diffusion math in pure JAX: schedule, parameterisations, loss, samplers, guidance, thresholding.

Models enter only as plain callables (`model_fn(z, logsnr)` for the loss, `predict(z, logsnr)`
for the samplers, `model_fn(z, logsnr, conditioning)` for guidance); nothing here imports
`lumiere_jax.models`, the trainer or the sampling pipeline.
"""

from lumiere_jax.diffusion.augmentation import noise_augment, random_noise_augment
from lumiere_jax.diffusion.guidance import (
    classifier_free_guidance,
    drop_conditioning,
    guidance_branches,
    guide,
    null_text_conditioning,
)
from lumiere_jax.diffusion.losses import NoisedBatch, diffusion_loss, noise_batch, sample_times
from lumiere_jax.diffusion.parameterization import (
    PARAMETERIZATIONS,
    eps_from_v,
    eps_from_x0,
    output_to_x0_eps,
    training_target,
    v_from_eps,
    v_from_x0,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from lumiere_jax.diffusion.samplers import (
    SAMPLERS,
    SamplerSettings,
    ddim_sample,
    ddpm_sample,
    dpmpp_2m_sample,
    denoise,
    replace_known,
    sample,
    sdedit_steps,
)
from lumiere_jax.diffusion.schedule import (
    CosineSchedule, DDPMCosineSchedule, alpha_sigma, diffuse, per_example, rediffuse,
)
from lumiere_jax.diffusion.settings import (
    parameterization_from_config,
    sampler_settings_from_config,
    schedule_from_config,
)
from lumiere_jax.diffusion.thresholding import dynamic_threshold

__all__ = [
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "CosineSchedule",
    "DDPMCosineSchedule",
    "NoisedBatch",
    "SamplerSettings",
    "alpha_sigma",
    "classifier_free_guidance",
    "ddim_sample",
    "ddpm_sample",
    "dpmpp_2m_sample",
    "denoise",
    "diffuse",
    "diffusion_loss",
    "drop_conditioning",
    "dynamic_threshold",
    "eps_from_v",
    "eps_from_x0",
    "guidance_branches",
    "guide",
    "noise_augment",
    "noise_batch",
    "rediffuse",
    "null_text_conditioning",
    "output_to_x0_eps",
    "parameterization_from_config",
    "per_example",
    "random_noise_augment",
    "sample",
    "replace_known",
    "sample_times",
    "sdedit_steps",
    "sampler_settings_from_config",
    "schedule_from_config",
    "training_target",
    "v_from_eps",
    "v_from_x0",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
