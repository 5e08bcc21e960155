"""Lumiere's spatial super-resolution stage: 128x128 -> 1024x1024 on temporal windows.

Our choices (the paper publishes neither the SSR architecture nor its window length):
- windows of 16 frames overlapping by 2 (Lumiere's overlap), stitched over the 80-frame clip with
  temporal MultiDiffusion: 6 windows (starts 0, 14, 28, 42, 56, 64), i.e. 96 frames processed per
  80-frame clip (1.2x);
- an efficient pixel-space U-Net in the Imagen SR style: few channels at full resolution, no
  attention above 32x32 (T5 text enters through attention at 32x32 only), factorized space-time
  conv blocks at every level but the coarsest, no temporal down/upsampling;
- conditioning augmentation: the low-res clip noised at logsnr ~ U(0, 10) in training, 6 at sampling.

Usage: --config=configs/ssr_paper.py
"""
from lumiere_jax.config import base_config


def get_config(arg=None):
    del arg
    c = base_config()
    c.ssr.enabled = True
    c.ssr.window = 16
    c.ssr.overlap = 2
    c.data.num_frames = 16
    c.data.resolution = 128
    c.data.hires_resolution = 1024
    c.text.max_length = 128
    c.diffusion.shift = 1024 / 64  # shifted cosine schedule for the larger resolution
    m = c.model
    m.conditioning_channels = 3
    m.aug_conditioning = True
    m.base_channels = 64
    m.channel_mult = (1, 2, 4, 8, 8, 8)  # 1024, 512, 256, 128, 64, 32
    m.num_res_blocks = 2
    m.attention_levels = (5,)
    m.head_dim = 64
    m.norm_groups = 32
    m.text_dim = 4096
    m.dtype = "bfloat16"
    m.remat = "full"
    m.temporal.downsample_levels = ()
    m.temporal.attention_depth = 0
    c.train.trainable = "all"
    return c
