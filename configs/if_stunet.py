"""DeepFloyd IF stage I inflated into a STUNet: 80 frames (5 s at 16 fps) of 64x64, spatial frozen.

Start from the released weights (README, "Starting from DeepFloyd IF"): `train.init_from` is the
diffusers `unet/` directory of IF-I-XL / L / M, converted on load (models/diffusers_if.py), and
only the temporal layers train. The arg is `xl` (default: IF-I-XL, 4.3B, whose shape is written
below) or the `unet/` directory of any IF-I model (M, L, XL): its shape is then read from that
config.json (`diffusers_if.model_config_from_diffusers`).

- the IF-I U-Net as released (block_set=deepfloyd_if): levels 64, 32, 16, 8 px, channels
  base x (1, 2, 3, 4), 3 res blocks per level, attention with T5-XXL text at 32, 16 and 8 px,
  eps + learned-range variance output (our samplers use the eps half), DDPM squaredcos_cap_v2 noise;
- Lumiere's inflation, as for our own backbone: temporal convs after every spatial block but at
  the coarsest level, time halved at the first three downsamplings (80 -> 40 -> 20 -> 10 frames),
  temporal attention at 8x8;
- IF's text conventions: 77 lower-cased tokens, all attended, null prompt = T5(""); sampling as
  the IF pipeline: dynamic thresholding at the 95th percentile, the scale capped at 1.5.

Usage: --config=configs/if_stunet.py[:xl|UNET_DIR] --config.train.init_from=IF-I-XL-v1.0/unet
"""
from lumiere_jax.config import base_config
from lumiere_jax.models.diffusers_if import model_config_from_diffusers, read_diffusers_config


def get_config(arg=None):
    c = base_config()
    c.data.num_frames = 80
    c.data.resolution = 64
    c.text.max_length = 77
    c.text.conventions = "deepfloyd_if"
    c.text.encoder = "xxl"
    c.text.variant = "t5_1_1"
    c.diffusion.parameterization = "eps"
    c.diffusion.schedule = "ddpm_cosine"
    c.sample.threshold_percentile = 95.0
    c.sample.threshold_max = 1.5  # IF's sample_max_value
    m = c.model
    m.block_set = "deepfloyd_if"
    m.base_channels = 704
    m.channel_mult = (1, 2, 3, 4)
    m.num_res_blocks = 3
    m.attention_levels = (1, 2, 3)
    m.head_dim = 64
    m.norm_groups = 32
    m.text_dim = 4096
    m.text_pool_heads = 64
    m.learned_variance = True
    if arg and arg.lower() != "xl":  # another IF-I model: its shape from its own config.json
        m.update(model_config_from_diffusers(read_diffusers_config(arg)))
    m.dtype = "bfloat16"
    m.remat = "full"
    m.temporal.downsample_levels = (0, 1, 2)
    m.temporal.attention_depth = 4
    m.temporal.attention_head_dim = 64
    c.train.trainable = "temporal"
    return c
