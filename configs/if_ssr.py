"""DeepFloyd IF stage II inflated into Lumiere's SSR: 64 -> 256 px on 16-frame windows.

`train.init_from` is the diffusers `unet/` directory of IF-II-L (arg `l`, the default, whose shape
is written below; or the `unet/` directory of any IF-II model, whose config.json gives the shape):
its low-res input channels and noise-level ("class") embedding load into our SSR conditioning
path (`cond_input`, `aug_embedding`), the low-res clip is upsampled with align_corners=True as
the IF-II pipeline does, and only the temporal layers train.

- IF-II-L as released: levels 256, 128, 64, 32, 16 px, channels base x (1, 2, 4, 6, 8), res blocks
  (2, 2, 3, 5, 5), text-only attention at 32 and 16 px, embedding width 1280, res blocks scaled
  by 1/0.7071;
- temporal convs after every spatial block but at the coarsest level, one temporal attention
  layer at 16x16, no temporal down/upsampling (windows of 16 frames, stitched with
  MultiDiffusion over the base clip, overlap 2);
- augmentation: IF-II samples at noise_level 250 of its DDPM table (logsnr 1.70); training draws
  the level between steps 500 and 0 (logsnr -0.03 .. 10.1).

Usage: --config=configs/if_ssr.py[:l|UNET_DIR] --config.train.init_from=IF-II-L-v1.0/unet
"""
from lumiere_jax.config import base_config
from lumiere_jax.diffusion.schedule import ddpm_cosine_logsnr
from lumiere_jax.models.diffusers_if import model_config_from_diffusers, read_diffusers_config

NOISE_LEVEL = 250  # the IF-II pipeline's default augmentation step


def get_config(arg=None):
    table = ddpm_cosine_logsnr()
    c = base_config()
    c.ssr.enabled = True
    c.ssr.window = 16
    c.ssr.overlap = 2
    c.ssr.aug_logsnr_min = float(table[500])
    c.ssr.aug_logsnr_max = float(table[0])
    c.ssr.sample_aug_logsnr = float(table[NOISE_LEVEL])
    c.data.num_frames = 16
    c.data.resolution = 64
    c.data.hires_resolution = 256
    c.text.max_length = 77
    c.text.conventions = "deepfloyd_if"
    c.diffusion.parameterization = "eps"
    c.diffusion.schedule = "ddpm_cosine"
    c.sample.threshold_percentile = 95.0
    c.sample.threshold_max = 1.0  # IF's sample_max_value
    m = c.model
    m.block_set = "deepfloyd_if"
    m.conditioning_channels = 3
    m.aug_conditioning = True
    m.lowres_align_corners = True
    m.base_channels = 160
    m.channel_mult = (1, 2, 4, 6, 8)
    m.res_blocks_per_level = (2, 2, 3, 5, 5)
    m.attention_levels = (3, 4)
    m.text_only_attention = True
    m.emb_dim = 1280
    m.res_output_scale = 1 / 0.7071
    m.head_dim = 64
    m.norm_groups = 32
    m.text_dim = 4096
    m.learned_variance = True
    if arg and arg.lower() != "l":  # another IF-II model: its shape from its own config.json
        m.update(model_config_from_diffusers(read_diffusers_config(arg)))
    m.dtype = "bfloat16"
    m.remat = "full"
    m.temporal.downsample_levels = ()
    m.temporal.attention_depth = 1
    c.train.trainable = "temporal"
    return c
