"""Builds the diffusion objects from the `config.diffusion` and `config.sample` sections.

Validation lives in the objects themselves (so direct construction is checked too); this module
reads keys, reporting a missing one by its full config path, and refuses what is well defined but
not what a config means (a one-step DPM-Solver++, `samplers.MIN_STEPS`).
"""
from __future__ import annotations

from typing import Any

from lumiere_jax.diffusion.parameterization import check_parameterization
from lumiere_jax.diffusion.samplers import SamplerSettings, check_config_num_steps
from lumiere_jax.diffusion.schedule import SCHEDULES, CosineSchedule, DDPMCosineSchedule


def _read(section: Any, section_name: str, key: str) -> Any:
    if key not in section:
        raise ValueError(f"config.{section_name}.{key} is missing; start from lumiere_jax.config.base_config()")
    return section[key]


def schedule_from_config(diffusion: Any) -> CosineSchedule | DDPMCosineSchedule:
    """`config.diffusion` (schedule; logsnr_min, logsnr_max, shift for the cosine one) -> the schedule."""
    # configs saved before the DDPM table existed have no `schedule` key: they are cosine
    kind = diffusion.get("schedule", "cosine")
    if kind not in SCHEDULES:
        raise ValueError(f"config.diffusion.schedule={kind!r} is not one of {SCHEDULES} (cosine: ours; ddpm_cosine: "
                         "the discrete squaredcos_cap_v2 table DeepFloyd IF was trained with)")
    if kind == "ddpm_cosine":
        return DDPMCosineSchedule()
    return CosineSchedule(
        logsnr_min=_read(diffusion, "diffusion", "logsnr_min"),
        logsnr_max=_read(diffusion, "diffusion", "logsnr_max"),
        shift=_read(diffusion, "diffusion", "shift"),
    )


def parameterization_from_config(diffusion: Any) -> str:
    """`config.diffusion.parameterization` ('v' or 'eps'), validated."""
    return check_parameterization(_read(diffusion, "diffusion", "parameterization"))


def sampler_settings_from_config(sample: Any) -> SamplerSettings:
    """`config.sample` (sampler, num_steps, ddim_eta, guidance_scale, threshold_percentile, threshold_max,
    resample) -> SamplerSettings."""
    keys = ("sampler", "num_steps", "ddim_eta", "guidance_scale", "threshold_percentile", "threshold_max")
    # configs saved before resampling existed have no `resample` key: each step taken once
    settings = SamplerSettings(**{key: _read(sample, "sample", key) for key in keys}, resample=sample.get("resample", 1))
    check_config_num_steps(settings.num_steps, settings.sampler)
    return settings
