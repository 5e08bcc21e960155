"""Runs a metric network over many videos: jitted once, batches sharded over the mesh's batch axes.

The metric networks (I3D, C3D, CLIP) are small next to the generator, so their weights are
replicated and only the videos are split across devices; preprocessing (resize, scaling) runs
inside the same jitted program, on the device. A batch is padded up to a multiple of the batch
shards and the padding rows dropped from the outputs, so any number of videos works.
"""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lumiere_jax.parallel import batch_shard_count, batch_sharding


class FeatureExtractor:
    """`extractor(videos)` -> {name: (B, ...) numpy} for `outputs(network, videos)`."""

    def __init__(self, network: nnx.Module, outputs: Callable[[nnx.Module, jax.Array], dict], mesh: Mesh, rules):
        self.mesh, self.rules = mesh, rules
        self.shards = batch_shard_count(mesh, rules)
        graphdef, state = nnx.split(network)
        self.state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))

        @jax.jit
        def run(state, videos):
            return outputs(nnx.merge(graphdef, state), videos)

        self._run = run

    def __call__(self, videos: np.ndarray) -> dict[str, np.ndarray]:
        """`videos` (B, ...): float frames, or token ids for a text tower."""
        videos = np.asarray(videos)
        count = videos.shape[0]
        padding = -count % self.shards
        if padding:
            videos = np.concatenate([videos, np.repeat(videos[-1:], padding, axis=0)])
        with jax.set_mesh(self.mesh):
            placed = jax.device_put(videos, batch_sharding(self.mesh, self.rules, videos.ndim))
            result = self._run(self.state, placed)
        return {k: np.asarray(v)[:count] for k, v in result.items()}
