"""Imagen's dynamic thresholding of x0 predictions (Saharia et al. 2022, section 2.3)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def check_percentile(percentile: float) -> float:
    """Returns `percentile` if it lies in [0, 100] (0 disables thresholding), else raises."""
    if (
        not isinstance(percentile, (int, float))
        or isinstance(percentile, bool)
        or not math.isfinite(percentile)
        or not 0.0 <= percentile <= 100.0
    ):
        raise ValueError(
            f"sample.threshold_percentile={percentile!r} must be a number in [0, 100] "
            "(0 disables dynamic thresholding; Imagen uses a high percentile such as 99.5)"
        )
    return float(percentile)


def check_max_value(max_value: float) -> float:
    """Returns `max_value` if it is 0 (no cap) or a finite number >= 1, else raises."""
    if (not isinstance(max_value, (int, float)) or isinstance(max_value, bool) or not math.isfinite(max_value)
            or not (max_value == 0.0 or max_value >= 1.0)):
        raise ValueError(f"sample.threshold_max={max_value!r} must be 0 (no cap) or a number >= 1 "
                         "(DeepFloyd IF samples with 1.5 in stage I and 1.0 in stage II)")
    return float(max_value)


def dynamic_threshold(x0: jax.Array, percentile: float, max_value: float = 0.0) -> jax.Array:
    """s = max(percentile of |x0| per sample, 1), capped at `max_value` when that is > 0; returns
    clip(x0, -s, s) / s.

    High guidance scales push x0 predictions far outside the data range [-1, 1]; static clipping
    then saturates pixels, while dividing by s pulls the whole sample back in proportionally.
    Samples already within [-1, 1] get s = 1 and come back bit-for-bit unchanged. The cap is
    DeepFloyd IF's `sample_max_value` (1.0 makes it static clipping). Both are Python numbers
    (percentile 0 returns x0 untouched, decided at trace time).
    """
    max_value = check_max_value(max_value)
    if check_percentile(percentile) == 0.0:
        return x0
    s = jnp.maximum(_upper_percentile(jnp.abs(x0).reshape(x0.shape[0], -1), percentile), 1.0)
    if max_value > 0:
        s = jnp.minimum(s, max_value)
    s = s.reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s


def _upper_percentile(values: jax.Array, percentile: float) -> jax.Array:
    """Per-row percentile of (B, N) values with numpy's default linear interpolation.

    The two order statistics it interpolates lie in the top N - floor(h) values, h = (N - 1) p / 100,
    so a `top_k` of that size replaces a full sort: for p = 99.5 that is 0.5% of the row, which is
    ~40x faster than `jnp.percentile` on CPU (where the tests and CPU sampling run).
    """
    n = values.shape[1]
    position = (n - 1) * percentile / 100.0
    lower = math.floor(position)
    fraction = position - lower
    top = jax.lax.top_k(values, n - lower)[0]  # sorted[lower:], in some order
    if n - lower == 1:  # p = 100: the maximum
        return top[:, 0]
    # The two smallest of `top` are sorted[lower] and sorted[lower + 1]. (Indexing `top` directly
    # would be shorter, but XLA:CPU then rewrites the top_k into a full sort, 40x slower.)
    low, high = jnp.moveaxis(-jax.lax.top_k(-top, 2)[0], 1, 0)
    return low + fraction * (high - low)
