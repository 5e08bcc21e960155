"""STUNet at the paper's shape: 80 frames (5 s at 16 fps) of 128x128 in one pass.

Lumiere does not publish its backbone; these are our choices (see README, "Model"):
- five resolution levels 128, 64, 32, 16, 8 with widths 256/512/768/1024/1024, two res blocks
  each (an Imagen-style T2I U-Net of ~564M parameters), spatial self-attention with T5-XXL text
  at 16x16 and 8x8; the inflation adds ~118M temporal parameters (682M in all, ~50 TFLOPs per
  80-frame clip forward, see `--mode=model_report`);
- time halved at the first three spatial downsamplings: 80 -> 40 -> 20 -> 10 frames, so the
  coarsest level (8x8) sees 10 frames. 80 = 2**4 * 5 allows a 4th halving; we keep 10 frames at
  the bottleneck so the temporal attention still has a trajectory to attend over;
- four temporal attention layers (64-d heads, relative-position bias) at the coarsest level.

Usage: --config=configs/stunet_paper.py
"""
from lumiere_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.data.num_frames = 80
    c.data.resolution = 128
    c.text.max_length = 128
    m = c.model
    m.base_channels = 256
    m.channel_mult = (1, 2, 3, 4, 4)
    m.num_res_blocks = 2
    m.attention_levels = (3, 4)
    m.head_dim = 64
    m.norm_groups = 32
    m.text_dim = 4096
    m.dtype = "bfloat16"
    m.temporal.downsample_levels = (0, 1, 2)
    m.temporal.attention_depth = 4
    m.temporal.attention_head_dim = 64
    m.temporal.max_relative_distance = 32
    return c
