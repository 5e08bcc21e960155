"""Deterministic in-memory training batches for trainer tests (also used by subprocess scripts)."""
import jax
import numpy as np

from lumiere_jax.parallel import batch_sharding


def moving_square_batch(index: int, batch: int, frames: int, size: int, text_len: int, text_dim: int, seed: int = 0):
    """A global batch of clips of a bright square moving right or down; the direction is in the text."""
    rng = np.random.default_rng([seed, index])
    video = np.full((batch, frames, size, size, 3), -1.0, np.float32)
    direction = rng.integers(0, 2, batch)
    start = rng.integers(0, size // 2, (batch, 2))
    side = max(size // 6, 2)
    for b in range(batch):
        for t in range(frames):
            y, x = start[b]
            if direction[b]:
                y = (y + t) % (size - side)
            else:
                x = (x + t) % (size - side)
            video[b, t, y:y + side, x:x + side] = 1.0
    text = np.zeros((batch, text_len, text_dim), np.float32)
    text[np.arange(batch), 0, direction] = 3.0
    mask = np.zeros((batch, text_len), bool)
    mask[:, :2] = True
    return {"video": video, "text_embeddings": text.astype(jax.numpy.bfloat16), "text_mask": mask}


class SyntheticBatches:
    """Global batches on `mesh`, built from each process's rows; resumable via get/set_state."""

    def __init__(self, config, mesh, rules, nan_steps=()):
        self.config, self.mesh, self.rules = config, mesh, rules
        self.index = 0
        self.nan_steps = set(nan_steps)

    def __iter__(self):
        return self

    def __next__(self):
        c = self.config
        full = moving_square_batch(self.index, c.data.batch_size, c.data.num_frames, c.data.resolution,
                                   c.text.max_length, c.model.text_dim, c.seed)
        if self.index in self.nan_steps:
            full["video"][0, 0, 0, 0, 0] = np.nan
        self.index += 1
        n, p = jax.process_count(), jax.process_index()
        rows = c.data.batch_size // n
        out = {}
        for key, value in full.items():
            local = value[p * rows:(p + 1) * rows]
            sharding = batch_sharding(self.mesh, self.rules, value.ndim)
            out[key] = jax.make_array_from_process_local_data(sharding, local, value.shape)
        return out

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


def train_config(batch_size=8, steps=4):
    """The tiny STUNet trained end to end (all parameters: its T2I part is untrained)."""
    from configs.stunet_tiny import get_config

    c = get_config()
    c.data.num_frames = 8
    c.data.resolution = 16
    c.data.batch_size = batch_size
    c.model.base_channels = 8
    c.model.channel_mult = (1, 2)
    c.model.attention_levels = (1,)
    c.model.head_dim = 8
    c.model.norm_groups = 4
    c.model.temporal.downsample_levels = (0,)
    c.model.temporal.attention_head_dim = 8
    c.train.trainable = "all"
    c.train.num_steps = steps
    c.train.learning_rate = 2e-3
    c.train.warmup_steps = 1
    # A constant rate after warm-up: the cosine's length (num_steps) is a constant of the compiled step,
    # so runs of 2, 3, 4 and 6 steps would each compile their own; with it they share one cached program.
    c.train.lr_schedule = "constant"
    c.train.log_every = 1
    c.train.checkpoint_every = 2
    c.mesh.shape.data = -1
    return c
