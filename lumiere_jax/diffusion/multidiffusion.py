"""Temporal MultiDiffusion (Lumiere section 3.2): a model that sees W frames denoises T > W frames.

At each denoising step the clip is cut into windows of W frames, every window is predicted in ONE
batched model call, and the window predictions are put back together (the *aggregation*):

  average      windows overlap by `overlap` frames (stride W - overlap, plus a last window aligned
               to the end), and each frame's prediction is the average over the windows covering
               it, which is the least-squares reconciliation
                   J' = argmin_J sum_i || J[window_i] - Phi(J_t[window_i]) ||^2;
               the paper's scheme (SSR keeps it, with its 2-frame overlap).
  taper        the averaged tiling, each window's frames weighted by a Hann taper sin^2(pi (j + 1/2) / W)
               (the weighted least-squares reconciliation, MultiDiffusion's per-pixel weights): a
               window's say in a frame falls smoothly to nearly nothing at its edges, so a frame
               entering or leaving a window does not step the average as it does under equal
               weights. At a stride of W/4 (or W/2) the tapers of the windows covering a frame sum to a
               constant, so every interior frame's weights total the same.
  independent  no aggregation: the clip is cut into W-frame windows that do not overlap (the last
               aligned to the end), each frame taken from one window (the last covering it). Every
               window is an independent sample: the baseline whose seams the others must remove.
  shifted      the averaged tiling, shifted by a different offset at every step (the windows'
               starts move by up to one stride), so no window boundary stays in place through the
               sampling: a seam one step leaves falls inside a window the next steps, which pull
               its two sides together. The offset is a function of the noise level, the one thing
               that changes from step to step in the model's view, so the samplers and guidance
               need nothing new (guidance's two branches share a step's tiling).
  extend       no per-step aggregation: the windows of the averaged tiling are sampled one after
               another, each with the frames it shares with the clip made so far known (pasted in
               by the replacement method at every step) and only its new frames generated: temporal
               extension by conditional sampling (Ho et al. 2022, "Video Diffusion Models", section
               3.1). Every frame is decided once, by the window that makes it, seeing the frames
               before it; no two windows average different objects, but what a window gets wrong
               the next ones continue (README "Long base-model clips"; `extend_windows`).

The aggregation is taken over model *outputs*, before the sampler step, so one global step
follows; averaging after an ancestral step would average independent noise and shrink its variance.
Window starts may be asked to be multiples of `align` (a model whose frame positions count from the
long clip's start sees its coarse, temporally downsampled frames on the same grid in every window).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

AGGREGATIONS = ("average", "taper", "independent", "shifted", "extend")


def check_aggregation(name: str) -> str:
    if name not in AGGREGATIONS:
        raise ValueError(f"window aggregation {name!r} is not one of {', '.join(AGGREGATIONS)} "
                         "(sample.window_aggregation: average is the paper's, taper weights each window's frames down "
                         "towards its edges, independent is the no-aggregation baseline, shifted moves the windows "
                         "every step, extend samples one window after another)")
    return name


def check_window_layout(num_frames: int, window: int, overlap: int, align: int = 1,
                        names: tuple[str, str] = ("num_frames", "overlap")) -> None:
    """Errors that say which values work: a clip shorter than the window, an overlap not smaller
    than the window, or (align > 1) starts off the grid of multiples of `align`. `names` are the
    settings to name (e.g. sample.num_frames, sample.window_overlap)."""
    frames_name, overlap_name = names
    if window < 1:
        raise ValueError(f"window={window} frames must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"{overlap_name}={overlap} must be in [0, {window}): consecutive {window}-frame windows "
                         f"cannot share {overlap} frames; use at most {window - 1}")
    if window > num_frames:
        raise ValueError(f"{frames_name}={num_frames} is shorter than the model's {window}-frame window; "
                         f"use {window} or more frames")
    if align > 1:
        if (window - overlap) % align:
            valid = [o for o in range(window) if (window - o) % align == 0]
            raise ValueError(f"{overlap_name}={overlap}: windows must start on multiples of {align} frames (the "
                             f"model's temporal downsampling) so every window sees a frame at the same position; "
                             f"use one of {valid}")
        if num_frames % align:
            raise ValueError(f"{frames_name}={num_frames}: the clip must be a multiple of {align} frames (the model's "
                             f"temporal downsampling), e.g. {num_frames - num_frames % align} or "
                             f"{num_frames - num_frames % align + align}")


def window_starts(num_frames: int, window: int, overlap: int) -> tuple[int, ...]:
    """First frame of every window; consecutive windows share `overlap` frames (the last may share more)."""
    check_window_layout(num_frames, window, overlap, names=("the clip's frames", "overlap"))
    starts = list(range(0, num_frames - window + 1, window - overlap))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return tuple(starts)


def layout_starts(num_frames: int, window: int, overlap: int, aggregation: str) -> tuple[int, ...]:
    """The windows of a fixed tiling (average, taper, independent; shifted's tiling at offset 0)."""
    return window_starts(num_frames, window, 0 if check_aggregation(aggregation) == "independent" else overlap)


def frame_owner(starts: Sequence[int], window: int, num_frames: int) -> np.ndarray:
    """(T,) index of the window each frame is taken from without aggregation: the last covering it."""
    owner = np.zeros(num_frames, int)
    for i, s in enumerate(starts):
        owner[s:s + window] = i
    return owner


def seam_pairs(num_frames: int, window: int, overlap: int, aggregation: str) -> tuple[int, ...]:
    """Frames f where the pair (f, f + 1) sits on a window boundary of the layout: where the set of
    windows a frame averages (average), or the window it comes from (independent), changes. The
    shifted tiling moves every step, so every pair is a boundary of some step."""
    if check_aggregation(aggregation) == "shifted":
        return tuple(range(num_frames - 1))
    starts = layout_starts(num_frames, window, overlap, aggregation)
    if aggregation == "extend":  # where each window's new frames begin
        return tuple(s + window - 1 for s in starts[:-1])
    if aggregation == "independent":
        owner = frame_owner(starts, window, num_frames)
        return tuple(int(f) for f in np.flatnonzero(owner[1:] != owner[:-1]))
    edges = {s - 1 for s in starts if s > 0} | {s + window - 1 for s in starts if s + window < num_frames}
    return tuple(sorted(edges))


def shifted_count(num_frames: int, window: int, overlap: int) -> int:
    """Windows of every shifted tiling: one more than the fixed tiling may need, so any offset covers."""
    return -(-(num_frames - window) // (window - overlap)) + 2


def shifted_starts(logsnr: jax.Array, num_frames: int, window: int, overlap: int, align: int = 1):
    """(starts (n,) int32, keep (n,) float) of this step's shifted tiling: starts shift + (k - 1) *
    stride clipped to the clip, shift in [0, stride) on multiples of `align`, drawn by hashing the
    step's noise level; `keep` is 0 for a window that clipping made a copy of its predecessor (so a
    frame's average counts every distinct window once)."""
    stride = window - overlap
    bits = jax.lax.bitcast_convert_type(jnp.asarray(logsnr, jnp.float32).reshape(-1)[0], jnp.uint32)
    mixed = (bits * jnp.uint32(2654435761)) >> 8  # Knuth's multiplicative hash; high bits spread best
    shift = (mixed % jnp.uint32(stride // align)).astype(jnp.int32) * align
    k = jnp.arange(shifted_count(num_frames, window, overlap), dtype=jnp.int32)
    starts = jnp.clip(shift + (k - 1) * stride, 0, num_frames - window)
    keep = jnp.concatenate([jnp.ones((1,)), (starts[1:] != starts[:-1]).astype(jnp.float32)])
    return starts, keep


def window_count(num_frames: int, window: int, overlap: int, aggregation: str) -> int:
    """Windows the model sees per clip and step (1: the whole clip at once; extend: per clip, each sampled
    in its own steps)."""
    if window >= num_frames:
        return 1
    if aggregation == "shifted":
        return shifted_count(num_frames, window, overlap)
    return len(layout_starts(num_frames, window, overlap, aggregation))


def split_windows(x: jax.Array, starts, window: int) -> jax.Array:
    """(B, T, ...) -> (n*B, W, ...), window-major: rows [i*B:(i+1)*B] are window i of every example.
    `starts`: Python ints or a traced (n,) array."""
    return jnp.concatenate([jax.lax.dynamic_slice_in_dim(x, starts[i], window, axis=1)
                            for i in range(len(starts))], axis=0)


def tile_windows(x: jax.Array, count: int) -> jax.Array:
    """Per-example values (B, ...) -> (count*B, ...) in the window-major order of `split_windows`."""
    return jnp.concatenate([x] * count, axis=0)


def merge_windows(y: jax.Array, starts, num_frames: int, weights=None) -> jax.Array:
    """(n*B, W, ...) window predictions -> (B, T, ...) per-frame weighted averages.

    `weights` (n, W), one per window frame (default all 1: the least-squares solution); every frame
    needs a positive total weight. `starts`: Python ints or a traced (n,) array."""
    n, window = len(starts), y.shape[1]
    per_window = y.reshape(n, -1, *y.shape[1:])
    weights = jnp.ones((n, window), y.dtype) if weights is None else jnp.asarray(weights, y.dtype)
    total = jnp.zeros((per_window.shape[1], num_frames) + y.shape[2:], y.dtype)
    count = jnp.zeros((num_frames,), y.dtype)
    frame_axes = (1,) * (y.ndim - 2)
    for i in range(n):
        s, w = starts[i], weights[i]
        piece = jax.lax.dynamic_slice_in_dim(total, s, window, axis=1) + per_window[i] * w.reshape((1, window) + frame_axes)
        total = jax.lax.dynamic_update_slice_in_dim(total, piece, s, axis=1)
        count = jax.lax.dynamic_update_slice_in_dim(count, jax.lax.dynamic_slice_in_dim(count, s, window) + w, s, 0)
    return total / count.reshape((1, num_frames) + frame_axes)


def hann_taper(window: int) -> np.ndarray:
    """(W,) sin^2(pi (j + 1/2) / W): positive everywhere, so a clip's first and last frames (one window
    each) keep a total weight, and symmetric, so no window's direction is favoured."""
    return (np.sin(np.pi * (np.arange(window) + 0.5) / window) ** 2).astype(np.float32)


def fixed_weights(starts: tuple[int, ...], window: int, num_frames: int, aggregation: str) -> Optional[np.ndarray]:
    """(n, W) weights of a fixed tiling: None (all 1) to average, the Hann taper for taper, one-hot
    owners for independent."""
    if aggregation == "taper":
        return np.tile(hann_taper(window), (len(starts), 1))
    if aggregation != "independent":
        return None
    owner = frame_owner(starts, window, num_frames)
    return np.stack([(owner[s:s + window] == i).astype(np.float32) for i, s in enumerate(starts)])


def multidiffusion(
    window_fn: Callable[[jax.Array, jax.Array, Any, Any], jax.Array],
    num_frames: int,
    window: int,
    overlap: int,
    constrain: Optional[Callable[[jax.Array], jax.Array]] = None,
    in_sequence: bool = False,
    aggregation: str = "average",
    align: int = 1,
    start_key: Optional[str] = None,
) -> Callable[[jax.Array, jax.Array, Any, Any], jax.Array]:
    """Wraps window_fn(z_w, logsnr_w, frame_cond_w, example_cond_w) -> prediction into a clip-level one.

    `frame_cond` leaves have a frame axis 1 and are windowed with z (e.g. SSR's low-res clip);
    `example_cond` leaves are per example and repeated for every window (text, noise levels).
    `constrain` (e.g. a sharding constraint over the data axis) is applied to the windowed batch.
    `in_sequence` calls the model on one window at a time (a `lax.map`) instead of all windows in
    one batch: the same predictions for a window count's share of the activation memory (SSR at
    1024x1024 needs it), at the cost of smaller model calls. (Unrolled calls would not do: XLA is
    free to run them side by side, and did, at the same memory.)
    `aggregation` (module docstring) puts the windows back together; `align` makes every window
    start a multiple of it; `start_key` (a dict `example_cond`) adds each window's first frame in
    the clip, (rows,) int32, under that key, for a model whose frame positions count from the clip's start.
    """
    if check_aggregation(aggregation) == "extend":
        raise ValueError("window aggregation 'extend' samples one window after another, not one aggregated "
                         "step: extend_windows runs it")
    check_window_layout(num_frames, window, overlap, align)
    if aggregation == "independent":
        check_window_layout(num_frames, window, 0, align)
    constrain = constrain or (lambda a: a)
    fixed = layout_starts(num_frames, window, overlap, aggregation)
    weights = fixed_weights(fixed, window, num_frames, aggregation)

    def tiling(logsnr):
        if aggregation == "shifted":
            starts, keep = shifted_starts(logsnr, num_frames, window, overlap, align)
            return starts, keep[:, None] * jnp.ones((1, window))
        return fixed, weights

    def with_start(example_cond, start):
        return example_cond if start_key is None else {**example_cond, start_key: start}

    def clip_fn(z, logsnr, frame_cond, example_cond):
        if z.shape[1] != num_frames:
            raise ValueError(f"clip has {z.shape[1]} frames; this MultiDiffusion was built for {num_frames}")
        starts, w = tiling(logsnr)
        n, batch = len(starts), z.shape[0]
        if in_sequence:
            stacked = lambda a: jnp.stack([jax.lax.dynamic_slice_in_dim(a, starts[i], window, axis=1)  # noqa: E731
                                           for i in range(n)])  # (n, B, W, ...)
            first = jnp.repeat(jnp.asarray(starts, jnp.int32)[:, None], batch, axis=1)  # (n, B)
            out = jax.lax.map(lambda a: window_fn(constrain(a[0]), logsnr, a[1], with_start(example_cond, a[2])),
                              (stacked(z), jax.tree.map(stacked, frame_cond), first))
            return merge_windows(out.reshape((-1,) + out.shape[2:]), starts, num_frames, w)
        windows = lambda a: constrain(split_windows(a, starts, window))  # noqa: E731
        tiled = lambda a: constrain(tile_windows(a, n))  # noqa: E731
        first = jnp.repeat(jnp.asarray(starts, jnp.int32), batch)  # window-major, like split_windows
        out = window_fn(windows(z), tiled(logsnr), jax.tree.map(windows, frame_cond),
                        with_start(jax.tree.map(tiled, example_cond), first))
        return merge_windows(out, starts, num_frames, w)

    return clip_fn


def extend_windows(sample_window: Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array],
                   noise: jax.Array, window: int, overlap: int) -> jax.Array:
    """Aggregation 'extend': a (B, T, ...) clip from `noise`, one window of the averaged tiling after another.

    sample_window(noise_w, known_w, start, index) -> (B, W, ...) samples window `index` (first frame
    `start`, both traced int32) from its slice of `noise`; known_w = (values, mask) as the samplers'
    replacement method takes it (values (B, W, ...), mask (1, W, 1, ..., 1), 1 = known): every frame an
    earlier window made, none for window 0. Its known frames are kept as they were. The windows run in
    a `lax.scan`: one traced window, whatever the clip's length.
    """
    num_frames = noise.shape[1]
    starts = window_starts(num_frames, window, overlap)
    made = [0] + [s + window for s in starts[:-1]]  # frames [0, made[i]) exist before window i
    frame_shape = (1,) * (noise.ndim - 2)

    def one_window(clip, inputs):
        index, start, made_before = inputs
        values = jax.lax.dynamic_slice_in_dim(clip, start, window, axis=1)
        known = (start + jnp.arange(window) < made_before).astype(clip.dtype).reshape((1, window) + frame_shape)
        out = sample_window(jax.lax.dynamic_slice_in_dim(noise, start, window, axis=1), (values, known), start, index)
        out = jnp.where(known > 0, values, out.astype(clip.dtype))
        return jax.lax.dynamic_update_slice_in_dim(clip, out, start, axis=1), None

    inputs = (jnp.arange(len(starts), dtype=jnp.int32), jnp.asarray(starts, jnp.int32), jnp.asarray(made, jnp.int32))
    clip, _ = jax.lax.scan(one_window, jnp.zeros(noise.shape, jnp.float32), inputs)
    return clip
