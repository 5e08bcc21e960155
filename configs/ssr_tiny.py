"""SSR at CPU-test size: 16x16 -> 32x32, windows of 4 frames overlapping by 2.

The same structure as ssr_paper.py: a U-Net with factorized space-time conv blocks (no temporal
down/upsampling, no temporal attention), the upsampled low-resolution clip joined as 3 input
channels, and the augmentation noise level as a second embedding.

Usage: --config=configs/ssr_tiny.py
"""
from lumiere_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.ssr.enabled = True
    c.ssr.window = 4
    c.ssr.overlap = 2
    c.data.num_frames = 4  # SSR trains on windows
    c.data.resolution = 16  # its input: the base model's output size
    c.data.hires_resolution = 32  # its output
    c.text.max_length = 8
    m = c.model
    m.conditioning_channels = 3
    m.aug_conditioning = True
    m.base_channels = 8
    m.channel_mult = (1, 2)
    m.num_res_blocks = 1
    m.attention_levels = ()
    m.head_dim = 8
    m.norm_groups = 4
    m.text_dim = 32
    m.temporal.downsample_levels = ()
    m.temporal.attention_depth = 0
    m.temporal.attention_head_dim = 8
    c.train.trainable = "all"
    c.sample.num_steps = 8
    return c
