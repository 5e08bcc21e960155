"""The one attention function every attention layer (spatial, text, temporal, T5) goes through.

It wraps `jax.nn.dot_product_attention`, whose `implementation` selects XLA (everywhere) or
cuDNN flash attention (NVIDIA GPUs), so the GPU path is fast without a second code path.
"""
from typing import Optional

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "auto")


def check_implementation(name: str) -> Optional[str]:
    """Maps a config value to `jax.nn.dot_product_attention`'s argument ('auto' -> None)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} is not one of {IMPLEMENTATIONS}")
    return None if name == "auto" else name


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: Optional[jax.Array] = None,
    bias: Optional[jax.Array] = None,
    scale: Optional[float] = None,
    implementation: str = "xla",
) -> jax.Array:
    """Multi-head attention on (batch, length, heads, head_dim) arrays.

    `mask` (boolean, True = attend) and `bias` broadcast to (batch, heads, q_len, kv_len).
    `scale` defaults to 1/sqrt(head_dim); T5 passes 1.0 (its scaling is folded into the weights).
    """
    if mask is not None:
        mask = mask.astype(jnp.bool_)
    if bias is not None:
        bias = bias.astype(q.dtype)
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, scale=scale, implementation=check_implementation(implementation)
    )
