"""Tiny exported models and sampling configs shared by the sampling tests."""
import json
import pathlib

import numpy as np
from flax import nnx

from lumiere_jax.models.unet import build_unet
from lumiere_jax.models.weights import save_weights
from random_arrays import normal
from train_helpers import train_config


def export_random(config, path: pathlib.Path, seed: int) -> pathlib.Path:
    """An export of a freshly initialised model whose zero-initialised output conv is perturbed."""
    model = build_unet(config.model, seed=seed)
    model.out_conv.kernel[...] = 0.05 * normal(seed, model.out_conv.kernel[...].shape)
    save_weights(path, nnx.state(model, nnx.Param), json.loads(config.to_json()))
    return path


def sample_config(tmp_path, base, ssr, prompts=("a red circle moving left", "a blue square moving up", "x")):
    config = train_config()
    s = config.sample
    s.prompts = list(prompts)
    s.base_checkpoint, s.ssr_checkpoint = str(base), str(ssr) if ssr else ""
    s.num_steps, s.sampler, s.guidance_scale = 4, "ddim", 2.0
    s.batch_size = 2
    rng = np.random.default_rng(0)
    embeddings = tmp_path / "prompts.npz"
    np.savez(embeddings, embeddings=rng.normal(size=(len(prompts), 8, 32)).astype(np.float32),
             mask=np.ones((len(prompts), 8), bool))
    s.prompt_embeddings = str(embeddings)
    return config
