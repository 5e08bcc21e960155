"""`--mode=model_report`: what a U-Net config builds, measured without allocating its weights.

Everything is computed on the abstract model (`nnx.eval_shape`) and on the lowered (not compiled)
forward pass, so the paper-scale STUNet reports in seconds on a laptop.
"""
from __future__ import annotations

import time
from collections import defaultdict

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models import param_groups
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import DTYPES, UNet, UNetConfig


def _level_of(path: tuple, levels: int) -> str:
    """Which resolution level a parameter path belongs to ('global' for stem/head/conditioning)."""
    head = path[0]
    if head in ("down", "up", "downsamples", "temporal_downsamples"):
        return str(int(path[1]))
    if head in ("upsamples", "temporal_upsamples"):  # upsample i maps level i+1 to level i
        return str(int(path[1]) + 1)
    if head.startswith("mid_") or head == "temporal_attention":
        return str(levels - 1)
    return "global"


def _count(state) -> int:
    return int(sum(x.size for x in jax.tree.leaves(state)))


def parameter_counts(model: UNet) -> dict:
    cfg = model.cfg
    totals = {name: _count(nnx.state(model, f)) for name, f in param_groups.GROUPS.items()}
    per_level = defaultdict(lambda: defaultdict(int))
    for name, f in param_groups.GROUPS.items():
        for path, var in nnx.to_flat_state(nnx.state(model, f)):
            per_level[_level_of(path, cfg.num_levels)][name] += int(var.get_raw_value().size)
    return {"total": _count(nnx.state(model, nnx.Param)), **totals,
            "per_level": {k: dict(v) for k, v in sorted(per_level.items())}}


def forward_flops(model: UNet, batch: int, frames: int, resolution: int, text_len: int) -> float:
    """FLOPs of one forward pass from XLA's cost analysis of the lowered program."""
    cfg = model.cfg
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, frames, resolution, resolution, cfg.in_channels + cfg.conditioning_channels),
                             jnp.float32)
    logsnr = jax.ShapeDtypeStruct((batch,), jnp.float32)
    text = jax.ShapeDtypeStruct((batch, text_len, cfg.text_dim), DTYPES[cfg.dtype])
    mask = jax.ShapeDtypeStruct((batch, text_len), jnp.bool_)

    def forward(state, x, logsnr, text, mask):
        # An SSR model also takes the noise level of its low-resolution input's augmentation.
        aug = logsnr if cfg.aug_conditioning else None
        return nnx.merge(graphdef, state)(x, logsnr, text, mask, aug_logsnr=aug)

    cost = jax.jit(forward).lower(state, x, logsnr, text, mask).cost_analysis()
    return float(cost["flops"])


def model_report(config) -> dict:
    """The JSON report of `config.model` at the shape `config.data` gives."""
    cfg = UNetConfig.from_config(config.model)
    frames = config.data.num_frames
    # An SSR model runs at its output size (its input is the upsampled low-resolution clip).
    resolution = config.data.hires_resolution if config.ssr.enabled else config.data.resolution
    if cfg.temporal:
        cfg.check_frames(frames)
    factor = cfg.patch_size * 2 ** (cfg.num_levels - 1)
    if resolution % factor:
        raise ValueError(f"data.resolution={resolution} is not divisible by patch_size * 2**(levels-1) = {factor}")
    start = time.perf_counter()
    model = nnx.eval_shape(lambda: UNet(cfg, rngs=Rngs(0)))
    levels = cfg.level_shapes(frames, resolution)
    for lv in levels:
        coarsest = lv["level"] == cfg.num_levels - 1
        lv["spatial_attention"] = lv["level"] in cfg.attention_levels
        lv["temporal_conv_blocks"] = cfg.temporal and not coarsest
        lv["temporal_attention_layers"] = cfg.temporal_attention_depth if cfg.temporal and coarsest else 0
        lv["temporal_downsample_after"] = cfg.temporal and lv["level"] in cfg.temporal_downsample_levels
    flops = forward_flops(model, 1, frames, resolution, config.text.max_length)
    return {
        "model": "STUNet" if cfg.temporal else "T2I U-Net",
        "input": {"frames": frames, "resolution": resolution, "channels": cfg.in_channels + cfg.conditioning_channels,
                  "text_tokens": config.text.max_length, "text_dim": cfg.text_dim},
        "compute_dtype": cfg.dtype,
        "parameters": parameter_counts(model),
        "levels": levels,
        "temporal_attention_levels": [lv["level"] for lv in levels if lv["temporal_attention_layers"]],
        "temporal_downsamplings": len(cfg.temporal_downsample_levels) if cfg.temporal else 0,
        "forward_flops_per_clip": flops,
        "forward_tflops_per_clip": round(flops / 1e12, 3),
        "flops_source": "XLA cost analysis of the lowered forward pass, batch 1",
        "report_seconds": round(time.perf_counter() - start, 2),
    }
