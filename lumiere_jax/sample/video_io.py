"""Writing generated clips as files people can open: GIF, H.264 MP4, PNG contact sheets."""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np
from PIL import Image


MIN_PREVIEW_PX = 128  # the smallest frame side in GIF and PNG outputs: a 32x32 frame is too small to see


def preview_scale(height: int, width: int) -> int:
    """The nearest-neighbour factor that brings a frame's smaller side to MIN_PREVIEW_PX (1 if it is)."""
    return max(1, -(-MIN_PREVIEW_PX // min(height, width)))


def enlarge(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, 3) with every pixel repeated preview_scale times each way (the GIF and PNG
    outputs; NPZ and MP4 keep the model's resolution)."""
    scale = preview_scale(*frames.shape[-3:-1])
    return frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def to_uint8(video: np.ndarray) -> np.ndarray:
    """[-1, 1] float video (T, H, W, 3) -> uint8."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def write_gif(path: pathlib.Path, frames: np.ndarray, fps: float) -> None:
    """frames: uint8 (T, H, W, 3); loops forever."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(round(1000 / fps)), loop=0)


def write_mp4(path: pathlib.Path, frames: np.ndarray, fps: float, crf: Optional[int] = None) -> None:
    """frames: uint8 (T, H, W, 3) -> H.264 MP4 with PyAV (bundled FFmpeg; no system ffmpeg needed); crf: libx264's
    constant rate factor (None: its default, 23; higher compresses more)."""
    import av
    from fractions import Fraction

    t, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = w + w % 2, h + h % 2  # yuv420p needs even sizes
        stream.pix_fmt = "yuv420p"
        if crf is not None:
            stream.options = {"crf": str(crf)}
        for frame in frames:
            if frame.shape[:2] != (stream.height, stream.width):
                frame = np.pad(frame, ((0, stream.height - h), (0, stream.width - w), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def contact_sheet(frames: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 (T, H, W, 3) -> one image with the frames in rows of `columns` (blank padding)."""
    t, h, w, c = frames.shape
    rows = -(-t // columns)
    sheet = np.zeros((rows * h, min(columns, t) * w, c), np.uint8)
    for i, frame in enumerate(frames):
        r, col = divmod(i, columns)
        sheet[r * h:(r + 1) * h, col * w:(col + 1) * w] = frame
    return sheet


def clips_sheet(clips) -> np.ndarray:
    """uint8 clips [(T, H, W, 3), ...] -> one image, a row of all its frames per clip (`enlarge`d)."""
    return np.concatenate([contact_sheet(enlarge(c), columns=len(c)) for c in clips], axis=0)


def tile_videos(clips: np.ndarray, columns: int) -> np.ndarray:
    """uint8 (N, T, H, W, 3) -> (T, rows*H', columns*W', 3): the clips (`enlarge`d to H' x W') playing
    side by side (blank tiles pad the last row)."""
    clips = enlarge(clips)
    n, t, h, w, c = clips.shape
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, t, h, w, c), np.uint8)
    padded[:n] = clips
    return padded.reshape(rows, columns, t, h, w, c).transpose(2, 0, 3, 1, 4, 5).reshape(t, rows * h, columns * w, c)


def write_png(path: pathlib.Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path)


def write_lossless_video(path: pathlib.Path, frames: np.ndarray, fps: float) -> None:
    """frames: uint8 (T, H, W, 3) -> FFV1 in Matroska (.mkv): bit-exact RGB, for inputs whose pixels a
    task must keep exactly (H.264's yuv420p would change them before the model sees them)."""
    import av
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "bgr0"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
