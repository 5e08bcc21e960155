"""Logical axis names that parameters and activations carry.

Model code names *what* an axis is ('embed', 'mlp', 'heads', ...); the mesh rules in
`lumiere_jax.parallel.mesh` decide *where* it lives ('data', 'fsdp', 'tensor'). Keeping the two
apart is what lets one model definition run on 1 CPU, 8 fake devices, a GPU or a TPU pod.
"""
from typing import Callable, Optional

from flax import nnx

BATCH = "batch"  # examples in a batch (activations only)
EMBED = "embed"  # a layer's input features / channels
MLP = "mlp"  # a layer's output features / channels, hidden widths
HEADS = "heads"  # attention heads
KV = "kv"  # per-head feature size
NORM = "norm"  # norm scales and biases (small, replicated)
VOCAB = "vocab"  # token vocabulary
RELPOS = "relpos"  # relative-position buckets
KERNEL = None  # spatial/temporal extent of a convolution kernel: never sharded

LOGICAL_AXES = (BATCH, EMBED, MLP, HEADS, KV, NORM, VOCAB, RELPOS)


def partitioned(init: Callable, *names: Optional[str]) -> Callable:
    """Wraps an initializer so the parameter it makes carries logical axis `names`.

    Sharding is never applied while a module is built (`eager_sharding=False`): modules can be
    built anywhere, including abstractly with `nnx.eval_shape`, and are placed on a mesh by
    `lumiere_jax.parallel.create_sharded` / `shard_module`, which read these names.
    """
    return nnx.with_partitioning(init, tuple(names), eager_sharding=False)
