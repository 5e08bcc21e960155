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

    def _padded(self, videos: np.ndarray) -> np.ndarray:
        """`videos` with its last row repeated up to a multiple of the batch shards."""
        padding = -videos.shape[0] % self.shards
        return np.concatenate([videos, np.repeat(videos[-1:], padding, axis=0)]) if padding else videos

    def __call__(self, videos: np.ndarray) -> dict[str, np.ndarray]:
        """`videos` (B, ...): float frames, or token ids for a text tower."""
        videos = np.asarray(videos)
        padded = self._padded(videos)
        with jax.set_mesh(self.mesh):
            placed = jax.device_put(padded, batch_sharding(self.mesh, self.rules, padded.ndim))
            result = self._run(self.state, placed)
        return {k: np.asarray(v)[: videos.shape[0]] for k, v in result.items()}

    def compiled(self, videos: np.ndarray):
        """The compiled program for a batch like `videos` (its memory_analysis() is what a device holds)."""
        padded = self._padded(np.asarray(videos))
        spec = jax.ShapeDtypeStruct(padded.shape, padded.dtype,
                                    sharding=batch_sharding(self.mesh, self.rules, padded.ndim))
        with jax.set_mesh(self.mesh):
            return self._run.lower(self.state, spec).compile()
