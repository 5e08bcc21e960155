"""STUNet with the paper's structure at CPU-test size: 16 frames of 32x32, three levels.

Same layout as stunet_paper.py (temporal conv blocks on the fine levels, temporal attention at the
coarsest, time halved at every spatial downsampling) with widths small enough to compile and
run in seconds on a laptop CPU.

Usage: --config=configs/stunet_tiny.py
"""
from lumiere_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.num_frames = 16
    c.data.resolution = 32
    c.text.max_length = 8
    m = c.model
    m.base_channels = 16
    m.channel_mult = (1, 2, 2)
    m.num_res_blocks = 1
    m.attention_levels = (2,)
    m.head_dim = 16
    m.norm_groups = 8
    m.text_dim = 32
    m.temporal.downsample_levels = (0, 1)
    m.temporal.attention_depth = 1
    m.temporal.attention_head_dim = 16
    m.temporal.max_relative_distance = 8
    c.sample.num_steps = 8
    return c
