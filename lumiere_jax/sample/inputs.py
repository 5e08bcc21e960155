"""Reading the files a conditional task starts from: images, videos and masks, fitted to the model.

Every reader names the file and what is wrong with it (missing, unreadable, too short, a size or
frame count that does not fit), so a bad request fails before any model is built. The fitting is
documented once, here, and recorded in samples.json by `describe_fit`:

  images and video frames  scaled (bicubic, antialiased) to cover the target rectangle, the centre
                           kept: the short side fits and the long side is cropped evenly;
  videos                   resampled to the model's fps by sample and hold (output frame k shows the
                           source frame on screen at k / fps, as the data pipeline does), the first
                           `num_frames` frames; a shorter video is an error that says how many
                           seconds are needed;
  masks                    white (> 127) or true = the region the task generates; a mask image must
                           have the input's own size (it is then fitted like the input, nearest
                           neighbour) or already the model's frame size.
"""
from __future__ import annotations

import hashlib
import pathlib
from fractions import Fraction
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_pipelines.clips import cover_box, resample, resize_cover

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def sha256(path: pathlib.Path) -> str:
    """Hex digest of a file, or of a directory's files in name order (a folder of mask PNGs)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode() if path.is_dir() else b"")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def _existing(path, what: str) -> pathlib.Path:
    path = pathlib.Path(path)
    if not str(path) or not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    return path


def open_image(path, what: str) -> Image.Image:
    """A PIL image, loaded; FileNotFoundError / ValueError naming `what` and the file."""
    path = _existing(path, what)
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"{what} {path} is not a readable image (PNG, JPEG, ...): {e}") from None


def fit_image(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: the image scaled to cover the rectangle, centre kept."""
    return resize_cover(image, width, height)


def describe_fit(source_size: tuple[int, int], width: int, height: int) -> dict:
    """What fitting a (w, h) source into width x height did, for the report."""
    left, top, right, bottom = cover_box(source_size, width, height)
    return {"source_size": list(source_size), "scale": round(width / (right - left), 6),
            "kept_source_region": [round(right - left), round(bottom - top)],
            "crop_offset": [round(left, 2), round(top, 2)], "size": [width, height]}


def read_video(path, num_frames: int, fps: float) -> tuple[list[Image.Image], dict]:
    """The first `num_frames` frames of a video resampled to `fps`, as PIL images, and source facts.

    Any format PyAV (bundled FFmpeg) decodes. ValueError when it is unreadable or too short.
    """
    import av

    from data_pipelines.prepare_videos import _Progress, frame_period, timed_frames

    path = _existing(path, "sample.input video")
    rate = Fraction(fps).limit_denominator(1000)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"sample.input {path} has no video stream")
            stream = container.streams.video[0]
            period = frame_period(stream)
            frames = []
            for frame in resample(timed_frames(container, stream, _Progress()), rate, period):
                frames.append(frame.to_image())
                if len(frames) == num_frames:
                    break
            source = {"source_fps": float(1 / period), "source_size": [stream.width, stream.height]}
    except av.error.FFmpegError as e:
        raise ValueError(f"sample.input {path} is not a readable video: {e}") from None
    if len(frames) < num_frames:
        raise ValueError(
            f"sample.input {path} gives {len(frames)} frames at {fps:g} fps ({len(frames) / fps:.2f} s); the clip "
            f"needs {num_frames} frames = {num_frames / fps:.2f} s: use a longer video or a smaller sample.num_frames")
    return frames, source


def _binary(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array
    return array > (127 if np.issubdtype(array.dtype, np.integer) and array.max() > 1 else 0.5)


def _fit_mask(mask: np.ndarray, source_size: tuple[int, int], width: int, height: int, name: str) -> np.ndarray:
    """(..., h, w) bool mask -> (..., height, width): fitted like the input when it has the input's
    size, taken as is when it has the target size; an error otherwise."""
    h, w = mask.shape[-2:]
    if (w, h) == (width, height) and (w, h) != tuple(source_size):
        return mask
    if (w, h) != tuple(source_size):
        raise ValueError(f"mask {name} is {w}x{h}, but the input is {source_size[0]}x{source_size[1]} (and the "
                         f"model's frame {width}x{height}): give a mask of either size")
    flat = mask.reshape(-1, h, w)
    fitted = [np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize(
        (width, height), Image.Resampling.NEAREST, box=cover_box((w, h), width, height))) > 127 for m in flat]
    return np.stack(fitted).reshape(mask.shape[:-2] + (height, width))


def parse_box(spec: str) -> Optional[tuple[float, ...]]:
    """'x0,y0,x1,y1[,t0,t1]' -> floats, or None when `spec` is not of that form (then it is a path)."""
    parts = spec.split(",")
    if len(parts) not in (4, 6):
        return None
    try:
        return tuple(float(p) for p in parts)
    except ValueError:
        return None


def read_mask(spec: str, source_size: tuple[int, int], width: int, height: int, num_frames: int,
              scale: float = 1.0) -> np.ndarray:
    """The (T, height, width) bool mask of the region a task generates (True = generate), from:

    - a box 'x0,y0,x1,y1[,t0,t1]': pixels of the model's frame (multiplied by `scale` for a larger
      output, e.g. after SSR) and frames t0 <= t < t1 (every frame without them);
    - a PNG/JPEG: the same region on every frame;
    - a directory of images: one per frame, in name order, exactly num_frames of them;
    - an .npz with an array 'mask' (H, W) or (T, H, W).
    """
    if not spec:
        raise ValueError("sample.mask is required for this task (a box 'x0,y0,x1,y1[,t0,t1]', an image, "
                         "a folder of one image per frame, or an .npz with 'mask')")
    box = parse_box(spec)
    if box is not None:
        x0, y0, x1, y1 = (v * scale for v in box[:4])
        t0, t1 = box[4:] if len(box) == 6 else (0, num_frames)
        if not (0 <= x0 < x1 <= width * 1.0001 and 0 <= y0 < y1 <= height * 1.0001 and 0 <= t0 < t1 <= num_frames):
            raise ValueError(f"mask box {spec!r} must satisfy 0 <= x0 < x1 <= {width / scale:g}, "
                             f"0 <= y0 < y1 <= {height / scale:g} and 0 <= t0 < t1 <= {num_frames} (frames)")
        ys, xs = np.mgrid[0:height, 0:width] + 0.5
        region = (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
        frames = (np.arange(num_frames) >= t0) & (np.arange(num_frames) < t1)
        return frames[:, None, None] & region[None]
    path = _existing(spec, "sample.mask")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) != num_frames:
            raise ValueError(f"mask folder {path} holds {len(files)} images; the clip has {num_frames} frames "
                             "(one mask image per frame)")
        stack = np.stack([_binary(np.asarray(open_image(f, "mask image").convert("L"))) for f in files])
    elif path.suffix == ".npz":
        try:
            with np.load(path) as data:
                stack = _binary(np.asarray(data["mask"]))
        except (KeyError, ValueError, OSError) as e:
            raise ValueError(f"mask {path} is not an .npz holding an array 'mask': {e}") from None
        if stack.ndim == 3 and stack.shape[0] != num_frames or stack.ndim not in (2, 3):
            raise ValueError(f"mask {path} has shape {stack.shape}; expected (H, W) or ({num_frames}, H, W)")
    else:
        stack = _binary(np.asarray(open_image(path, "sample.mask").convert("L")))
    stack = _fit_mask(stack, source_size, width, height, str(path))
    return np.broadcast_to(stack, (num_frames, height, width)) if stack.ndim == 2 else stack
