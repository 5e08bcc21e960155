"""The CPU demo's model for clips longer than its 16-frame window (issue 21): configs/demo.py's STUNet,
trained from scratch on stationary moving shapes, with frame positions counted from the long clip.

What changes from configs/demo.py, and why:
- Data: `data_pipelines.synthetic --motion stationary` clips (scripts/build_long_checkpoint.sh writes
  them): the shape keeps its speed and wraps around the borders, so every 16-frame window of a long
  clip is a clip of the training domain with the same true caption. (The demo's traversal clips cross
  the frame once per clip: a 64-frame "moving left" at their speed is not in their domain.)
- model.temporal.frame_position='global': the frame embedding reads a frame's place in the long clip,
  (start + i + 0.5) / 16, the same in every window that holds it (the demo's 'clip' positions count
  from each window's start, so its windows disagree and the sampler refuses long clips from it).
  Training shows every clip as a window at a random start (multiples of 4, the temporal downsampling)
  of a clip of up to model.temporal.max_clip_frames = 64 frames, 4x the training length.
- Windows overlap by 12 of 16 frames (starts must be multiples of 4: overlap 0, 4, 8 or 12), put
  together with Hann-tapered weights (`taper`): of the settings demo/long_checkpoint/provenance.json
  scores at 64 frames (average, taper and shifted at overlaps 8 and 12, independent windows), the
  smallest seams with the best direction and presence. (Shifted at overlap 12 is average: a 4-frame
  stride on the 4-frame grid has one tiling. Extending window by window,
  demo/long_checkpoint/provenance_extend.json, loses the most presence.) None meets every one of
  TARGETS; README "Long base-model clips" has the numbers.
Independent of demo/checkpoint: its own weights and run directory (workdir/demo_long), the same
caption grammar, vocabulary (copied beside the export) and seeded tiny T5.

Usage: --config=configs/demo_long.py (paths are relative to the repository root)
"""
from configs import demo

HELDOUT = demo.HELDOUT
LONG_FRAMES = 64  # the evaluation length: 4x the 16-frame window
# Issue 21's targets on the held-out prompts at LONG_FRAMES frames (seam ratio: at most).
TARGETS = {"direction_accuracy": 0.8, "presence_rate": 0.95, "seam_ratio": 2.0}


def get_config(arg=None):
    c = demo.get_config(arg)
    c.data.sources = [{"glob": "workdir/demo_long/data/train/*.array_record", "weight": 1.0, "kind": "video"}]
    c.text.vocabulary = "demo/long_checkpoint/vocab.model"
    t = c.model.temporal
    t.frame_position = "global"
    t.max_clip_frames = LONG_FRAMES
    s = c.sample
    s.base_checkpoint = "demo/long_checkpoint"
    s.num_frames = LONG_FRAMES
    s.window_overlap = 12
    s.window_aggregation = "taper"
    c.eval.motion = "stationary"
    # The demo's conditional, edit and style checkpoints build on demo/checkpoint, not on this one.
    c.demo.conditional_checkpoint = c.demo.edit_checkpoint = c.demo.style_checkpoint = ""
    return c
