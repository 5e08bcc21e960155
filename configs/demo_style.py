"""The CPU demo's style: the demo model's spatial weights fine-tuned on stills with a grey background.

Stylized generation (Lumiere section 4): the text-to-image part of the STUNet is fine-tuned on a few
style images (train.trainable=spatial, image batches, so every temporal module is bypassed), the
export keeps the spatial weights only, and sampling interpolates them with the base model's,
W = alpha W_style + (1 - alpha) W_base (sample.style_checkpoint, sample.style_alpha), leaving the
temporal weights, the motion prior, as they are. `scripts/build_style_checkpoint.sh` makes
demo/style_checkpoint with it.

Usage: --config=configs/demo_style.py (paths are relative to the repository root)
"""
from configs import demo

STYLE_BACKGROUND = (80, 80, 80)  # the style: a grey background instead of the domain's black
STYLE_IMAGES = 256
# Issue 15's targets on held-out prompts at the default alpha (the style score is the background level).
TARGETS = {"direction_accuracy": 0.8, "presence_rate": 0.9}


def get_config(arg=None):
    c = demo.get_config(arg)
    d = c.data
    d.num_frames = 1  # stills: an image batch runs the model in image mode, one frame per example
    d.batch_size = 32
    d.sources = [{"glob": "workdir/demo_style/data/*.array_record", "weight": 1.0, "kind": "image"}]
    tr = c.train
    tr.trainable = "spatial"
    tr.init_from = "demo/checkpoint"
    # A light fine-tune: the grey is learnt within tens of steps, while every further step also moves
    # the spatial weights towards working without the temporal modules (image mode), which the demo
    # model was never trained for, and that weakens the motion of the interpolated STUNet (measured
    # on 12 held-out clips at alpha 0.5: direction 83% / presence 99% after 40 or 80 steps at 1e-4,
    # 79% / 87% after 300 steps at 2e-4).
    tr.num_steps = 40
    tr.learning_rate = 1e-4
    tr.warmup_steps = 5
    tr.ema_decay = 0.9
    tr.checkpoint_every = 40
    c.sample.style_checkpoint = c.demo.style_checkpoint  # sampling with this config applies the style
    return c
