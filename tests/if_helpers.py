"""Tiny random DeepFloyd-IF-shaped diffusers U-Nets (DESIGN.md section 6), saved as safetensors.

diffusers builds them offline on CPU; the norms' affine parameters are randomised too (diffusers
initialises them to 1 and 0, which would hide a swapped or dropped norm), and the zero-initialised
output conv is not (diffusers draws it at random already).
"""
from __future__ import annotations

import pathlib

import ml_collections
import numpy as np

from lumiere_jax.config import model_config
from lumiere_jax.models.diffusers_if import model_config_from_diffusers

TEXT_DIM, TEXT_LEN = 64, 7
COMMON = dict(
    sample_size=16, block_out_channels=(32, 64, 96), norm_num_groups=8, cross_attention_dim=96,
    encoder_hid_dim=TEXT_DIM, attention_head_dim=16, addition_embed_type="text", addition_embed_type_num_heads=4,
    cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
)
# IF-I: 64x64 text-to-image, eps + learned-range variance (6 channels).
STAGE_I = dict(COMMON, in_channels=3, out_channels=6, layers_per_block=2)
# IF-II: super-resolution; the low-res image joins as 3 channels, its noise level is a class embedding.
STAGE_II = dict(
    COMMON, in_channels=6, out_channels=6, layers_per_block=(1, 2, 2), class_embed_type="timestep",
    time_embedding_dim=160, time_embedding_act_fn="gelu", resnet_skip_time_act=True,
    resnet_out_scale_factor=1 / 0.7071, mid_block_scale_factor=1 / 0.7071, only_cross_attention=True,
)
# IF-I cut to two levels of one layer, for the training test: the same converter paths, and a train step
# that compiles in a fraction of STAGE_I's time.
SMALL_STAGE_I = dict(
    STAGE_I, block_out_channels=(32, 64), cross_attention_dim=64, layers_per_block=1,
    down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
)


def build_diffusers_unet(kwargs: dict, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():
        for name, module in unet.named_modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
    return unet


def save_diffusers_unet(unet, directory: pathlib.Path) -> pathlib.Path:
    unet.save_pretrained(str(directory), safe_serialization=True)
    return directory


def our_model_config(dcfg: dict, temporal: bool, **overrides) -> ml_collections.ConfigDict:
    """config.model for a diffusers config (tiny temporal settings when inflated: time halved at every
    spatial downsampling)."""
    m = model_config()
    m.update(model_config_from_diffusers(dcfg))
    m.temporal.enabled = temporal
    m.temporal.downsample_levels = tuple(range(len(dcfg["block_out_channels"]) - 1))
    m.temporal.attention_head_dim = 16
    m.temporal.attention_depth = 1
    m.update(overrides)
    return m


def diffusers_forward(unet, image: np.ndarray, steps: np.ndarray, text: np.ndarray, class_labels=None) -> np.ndarray:
    """NHWC numpy in, NHWC numpy out, float32."""
    import torch

    with torch.no_grad():
        sample = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
        labels = None if class_labels is None else torch.from_numpy(np.asarray(class_labels))
        out = unet(sample, torch.from_numpy(np.asarray(steps)), torch.from_numpy(text), class_labels=labels).sample
    return out.numpy().transpose(0, 2, 3, 1)
