"""Temporal MultiDiffusion (Lumiere section 3.2): a model that sees W frames denoises T > W frames.

At each denoising step the clip is cut into windows of W frames that overlap by `overlap` frames
(stride W - overlap, plus a last window aligned to the end), every window is predicted in ONE
batched model call, and each frame's prediction is the average over the windows covering it,
which is the least-squares reconciliation

    J' = argmin_J sum_i || J[window_i] - Phi(J_t[window_i]) ||^2.

The average is taken over model *outputs*, before the sampler step, so one global step follows;
averaging after an ancestral step would average independent noise and shrink its variance.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp


def window_starts(num_frames: int, window: int, overlap: int) -> tuple[int, ...]:
    """First frame of every window; consecutive windows share `overlap` frames (the last may share more)."""
    if window < 1 or not 0 <= overlap < window:
        raise ValueError(f"window={window} must be >= 1 and overlap={overlap} in [0, window)")
    if window > num_frames:
        raise ValueError(f"window={window} frames is longer than the clip ({num_frames} frames)")
    starts = list(range(0, num_frames - window + 1, window - overlap))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return tuple(starts)


def split_windows(x: jax.Array, starts: tuple[int, ...], window: int) -> jax.Array:
    """(B, T, ...) -> (n*B, W, ...), window-major: rows [i*B:(i+1)*B] are window i of every example."""
    return jnp.concatenate([x[:, s:s + window] for s in starts], axis=0)


def tile_windows(x: jax.Array, count: int) -> jax.Array:
    """Per-example values (B, ...) -> (count*B, ...) in the window-major order of `split_windows`."""
    return jnp.concatenate([x] * count, axis=0)


def merge_windows(y: jax.Array, starts: tuple[int, ...], num_frames: int) -> jax.Array:
    """(n*B, W, ...) window predictions -> (B, T, ...) per-frame averages (the least-squares solution)."""
    n, window = len(starts), y.shape[1]
    per_window = y.reshape(n, -1, *y.shape[1:])
    total = jnp.zeros((per_window.shape[1], num_frames) + y.shape[2:], y.dtype)
    count = jnp.zeros((num_frames,), y.dtype)
    for i, s in enumerate(starts):
        total = total.at[:, s:s + window].add(per_window[i])
        count = count.at[s:s + window].add(1.0)
    return total / count.reshape((1, num_frames) + (1,) * (y.ndim - 2))


def multidiffusion(
    window_fn: Callable[[jax.Array, jax.Array, Any, Any], jax.Array],
    num_frames: int,
    window: int,
    overlap: int,
    constrain: Optional[Callable[[jax.Array], jax.Array]] = None,
    in_sequence: bool = False,
) -> Callable[[jax.Array, jax.Array, Any, Any], jax.Array]:
    """Wraps window_fn(z_w, logsnr_w, frame_cond_w, example_cond_w) -> prediction into a clip-level one.

    `frame_cond` leaves have a frame axis 1 and are windowed with z (e.g. SSR's low-res clip);
    `example_cond` leaves are per example and repeated for every window (text, noise levels).
    `constrain` (e.g. a sharding constraint over the data axis) is applied to the windowed batch.
    `in_sequence` calls the model on one window at a time (a `lax.map`) instead of all windows in
    one batch: the same predictions for a window count's share of the activation memory (SSR at
    1024x1024 needs it), at the cost of smaller model calls. (Unrolled calls would not do: XLA is
    free to run them side by side, and did, at the same memory.)
    """
    starts = window_starts(num_frames, window, overlap)
    constrain = constrain or (lambda a: a)

    def clip_fn(z, logsnr, frame_cond, example_cond):
        if z.shape[1] != num_frames:
            raise ValueError(f"clip has {z.shape[1]} frames; this MultiDiffusion was built for {num_frames}")
        if in_sequence:
            stacked = lambda a: jnp.stack([a[:, s:s + window] for s in starts])  # noqa: E731  (n, B, W, ...)
            out = jax.lax.map(lambda w: window_fn(constrain(w[0]), logsnr, w[1], example_cond),
                              (stacked(z), jax.tree.map(stacked, frame_cond)))
            return merge_windows(out.reshape((-1,) + out.shape[2:]), starts, num_frames)
        windows = lambda a: constrain(split_windows(a, starts, window))  # noqa: E731
        tiled = lambda a: constrain(tile_windows(a, len(starts)))  # noqa: E731
        out = window_fn(windows(z), tiled(logsnr), jax.tree.map(windows, frame_cond), jax.tree.map(tiled, example_cond))
        return merge_windows(out, starts, num_frames)

    return clip_fn
