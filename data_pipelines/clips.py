"""Turning a stream of timed video frames into fixed-length, fixed-fps, square clips.

Shared by `prepare_videos` (frames from PyAV) and `tfds_to_shards` (frames from arrays). Times
are exact fractions of a second, so a 25 fps source resampled to 16 fps picks source frame
floor(k * 25 / 16) for output frame k, with no float rounding at frame boundaries.
"""
from __future__ import annotations

import collections
import hashlib
from fractions import Fraction
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np
from PIL import Image

from data_pipelines.runner import Skip
from lumiere_jax.data.schema import ClipRecord

F = TypeVar("F")
X = TypeVar("X")


def resample(
    timed_frames: Iterable[tuple[Fraction, F]],
    fps: Fraction,
    frame_period: Fraction,
    start: Fraction = Fraction(0),
    end: Optional[Fraction] = None,
) -> Iterator[F]:
    """Yields the frame on screen at each time start + k / fps (sample and hold).

    A source frame with time t is shown until the next frame's time; the last one for
    `frame_period`. Output stops at `end` (exclusive) or when the source runs out, so a 5.28 s
    source at 16 fps gives ceil(5.28 * 16) = 85 frames.
    """
    k = 0
    shown: Optional[F] = None
    last_time = start
    for t, frame in timed_frames:
        while shown is not None and start + Fraction(k) / fps < t:
            if end is not None and start + Fraction(k) / fps >= end:
                return
            yield shown
            k += 1
        shown, last_time = frame, t
    if shown is None:
        return
    stop = last_time + frame_period if end is None else min(last_time + frame_period, end)
    while start + Fraction(k) / fps < stop:
        yield shown
        k += 1


def windows(items: Iterable[F], length: int, stride: int, convert: Callable[[F], X]) -> Iterator[tuple[int, list[X]]]:
    """Yields (first index, converted items) for windows [s, s + length), s = 0, stride, 2 stride, ...

    Streams: at most `length` converted items are held, and items that fall in no window (when
    stride > length) are never converted, since conversion (colour conversion + resizing) is
    the expensive part.
    """
    if length < 1 or stride < 1:
        raise ValueError(f"clip length and stride must be >= 1, got {length} and {stride}")
    buffer: collections.deque = collections.deque()
    first = 0
    for i, item in enumerate(items):
        if i < first:
            continue
        buffer.append(convert(item))
        if len(buffer) == length:
            yield first, list(buffer)
            first += stride
            for _ in range(min(stride, length)):
                buffer.popleft()


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Scales the short side to `size` and keeps the centre square: (size, size, 3) uint8."""
    return resize_cover(image, size, size)


def resize_cover(image: Image.Image, width: int, height: int) -> np.ndarray:
    """Scales the image to cover width x height and keeps the centre: (height, width, 3) uint8.

    One `resize(box=...)` of the centre region gives what resizing the whole frame and then
    cropping gives (pixels just outside the region still feed the filter), without resizing
    the discarded sides; PIL's bicubic filter widens when shrinking, so it is antialiased.
    """
    box = cover_box(image.size, width, height)
    return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC, box=box))


def cover_box(source_size: tuple[int, int], width: int, height: int) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the centre region of a (w, h) source that scales to cover width x height."""
    w, h = source_size
    scale = max(width / w, height / h)
    crop_w, crop_h = width / scale, height / scale
    return ((w - crop_w) / 2, (h - crop_h) / 2, (w + crop_w) / 2, (h + crop_h) / 2)


def clips_at_sizes(
    frames: Iterable[F],
    to_image: Callable[[F], Image.Image],
    length: int,
    stride: int,
    sizes: Sequence[int],
) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Cuts already-resampled frames into clips, each as {size: (length, size, size, 3)}."""

    def convert(frame: F) -> dict[int, np.ndarray]:
        image = to_image(frame)
        return {size: resize_center_crop(image, size) for size in sizes}

    for first, converted in windows(frames, length, stride, convert):
        yield first, {size: np.stack([c[size] for c in converted]) for size in sizes}


def clip_record(
    source_key: str, clip_index: int, caption: str, fps: float, stacks: dict[int, np.ndarray], meta: dict
) -> ClipRecord:
    """A record whose frames are the smallest size and whose hires copies are the others.

    The id is stable across runs and machines: a digest of the source key (a path relative to
    the dataset root, plus any segment bounds) and the clip's index within that source.
    """
    base = min(stacks)
    digest = hashlib.sha1(source_key.encode("utf-8")).hexdigest()[:16]
    return ClipRecord(
        id=f"{digest}-{clip_index:05d}",
        caption=caption,
        frames=stacks[base],
        fps=float(fps),
        hires={size: stack for size, stack in stacks.items() if size != base},
        meta=dict(meta, source=source_key, clip_index=clip_index),
    )


def cut_clips(
    timed_frames: Iterable[tuple[Fraction, F]],
    to_image: Callable[[F], Image.Image],
    frame_period: Fraction,
    fps: Fraction,
    length: int,
    stride: int,
    sizes: Sequence[int],
    start: Fraction = Fraction(0),
    end: Optional[Fraction] = None,
) -> Iterator[tuple[int, dict[int, np.ndarray]]]:
    """Resamples a source to `fps` and cuts it into clips; Skip('too_short') if none fits."""
    resampled = 0

    def counted() -> Iterator[F]:
        nonlocal resampled
        for frame in resample(timed_frames, fps, frame_period, start, end):
            resampled += 1
            yield frame

    clips = 0
    for first, stacks in clips_at_sizes(counted(), to_image, length, stride, sizes):
        clips += 1
        yield first, stacks
    if clips == 0:
        raise Skip("too_short", f"{resampled} frames at {float(fps):g} fps, fewer than the clip length {length}")
