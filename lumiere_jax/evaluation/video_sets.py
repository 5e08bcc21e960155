"""The sets of videos a metric compares: a sampling run's outputs, clip shards, or a folder of videos.

Each set yields `Clip`s of float32 frames in [0, 1] and records the videos it could not use
(unreadable file, corrupt shard, too few frames) in `skipped` with the reason, so one bad file
is counted instead of ending a 10,000-video evaluation.
"""
from __future__ import annotations

import abc
import dataclasses
import glob
import json
import pathlib
import zipfile
from typing import Iterator, Optional

import av
import numpy as np

from lumiere_jax.data.shards import iter_records
from lumiere_jax.evaluation.synthetic import to_unit_range

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm", ".avi", ".mov", ".mkv")


@dataclasses.dataclass
class Clip:
    name: str
    frames: np.ndarray  # (T, H, W, 3) float32 in [0, 1]
    caption: str = ""
    label: Optional[str] = None  # the class of a labelled dataset's clip (tfds_to_shards meta['label'])


def unit_frames(frames: np.ndarray) -> np.ndarray:
    """uint8 frames -> float32 in [0, 1]."""
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return frames.astype(np.float32) / 255.0


def read_video(path, max_frames: Optional[int] = None) -> np.ndarray:
    """The frames of a video file (the first `max_frames`: a metric needs only those, and decoding a
    long film to the end would dominate an evaluation) as (T, H, W, 3) uint8; ValueError naming the
    file when it cannot be decoded."""
    try:
        with av.open(str(path)) as container:
            frames = []
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, IndexError, ValueError) as e:  # IndexError: no video stream
        raise ValueError(f"{path} is not a readable video ({type(e).__name__}: {e})") from e
    if not frames:
        raise ValueError(f"{path} holds no video frames")
    return np.stack(frames)


def read_samples(workdir: pathlib.Path) -> list[dict]:
    """The `samples` list of WORKDIR/samples.json, as written by --mode=sample."""
    path = workdir / "samples.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run --mode=sample with this --workdir first")
    try:
        samples = json.loads(path.read_text())["samples"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a samples.json of --mode=sample (a JSON object with a 'samples' list): "
                         f"{type(e).__name__}: {e}") from e
    if not isinstance(samples, list) or not all(isinstance(s, dict) for s in samples):
        raise ValueError(f"{path}: 'samples' must be a list of objects with 'prompt' and 'npz'")
    return samples


def resolve(workdir: pathlib.Path, name: str) -> pathlib.Path:
    """The sampling job records paths as it was given them, so a relative workdir makes relative
    paths; those are looked up as given, then beside samples.json, where the job writes them."""
    path = pathlib.Path(name)
    return path if path.is_file() else workdir / path.name


def load_frames(workdir: pathlib.Path, sample: dict) -> np.ndarray:
    """One sample's (T, H, W, 3) frames in [0, 1]; ValueError saying what is wrong with it."""
    if "prompt" not in sample or "npz" not in sample:
        raise ValueError("the entry has no 'prompt' or no 'npz'")
    path = resolve(workdir, str(sample["npz"]))
    if not path.is_file():
        raise ValueError(f"{path} does not exist")
    try:
        with np.load(path) as data:
            frames = data["frames"]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as e:
        # TypeError: a plain .npy loads as an array, which is no context manager.
        raise ValueError(f"{path} is not an .npz with a 'frames' array: {type(e).__name__}: {e}") from e
    if frames.ndim != 4:
        raise ValueError(f"{path}: frames must be (T, H, W, 3), got shape {frames.shape}")
    return to_unit_range(frames[None])[0]


class VideoSet(abc.ABC):
    """Iterable of Clips; `skipped` lists {'name', 'reason'} of what could not be used."""

    def __init__(self, description: str):
        self.description = description
        self.skipped: list[dict] = []

    def skip(self, name: str, reason: str) -> None:
        """Records an unusable clip once, however many metrics pass over the set."""
        if all(s["name"] != name for s in self.skipped):
            self.skipped.append({"name": name, "reason": reason})

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Clip]:
        """The usable clips, in a fixed order."""


class FolderSet(VideoSet):
    def __init__(self, directory: pathlib.Path, max_frames: Optional[int] = None):
        super().__init__(f"videos in {directory}")
        self.max_frames = max_frames
        self.paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        if not self.paths:
            raise ValueError(f"{directory} holds no videos ({', '.join(VIDEO_SUFFIXES)})")

    def __iter__(self):
        for path in self.paths:
            try:
                yield Clip(path.name, unit_frames(read_video(path, self.max_frames)))
            except ValueError as e:
                self.skip(str(path), str(e))


class ShardSet(VideoSet):
    def __init__(self, pattern: str):
        super().__init__(f"clip shards {pattern}")
        self.paths = sorted(glob.glob(pattern))
        if not self.paths:
            raise ValueError(f"no shards match {pattern!r}; write them with a data_pipelines job")

    def __iter__(self):
        for path in self.paths:
            try:
                for record in iter_records(path):
                    yield Clip(record.id, unit_frames(record.frames), record.caption, record.meta.get("label"))
            except ValueError as e:  # an unreadable shard, or a corrupt record: the rest of the shard is lost
                self.skip(path, str(e))


class SampledSet(VideoSet):
    """The clips of a --mode=sample run (WORKDIR/samples.json), each with its prompt as the caption."""

    def __init__(self, workdir: pathlib.Path):
        super().__init__(f"samples of {workdir}")
        self.workdir = workdir
        self.samples = read_samples(workdir)

    def __iter__(self):
        for index, sample in enumerate(self.samples):
            try:
                yield Clip(str(sample.get("npz", index)), load_frames(self.workdir, sample), str(sample["prompt"]))
            except ValueError as e:
                self.skip(str(sample.get("npz", f"#{index}")), str(e))


class ClipList(VideoSet):
    """Clips already in memory (cut from long videos, rendered by a script)."""

    def __init__(self, description: str, clips: list[Clip]):
        super().__init__(description)
        self.clips = clips

    def __iter__(self):
        return iter(self.clips)


def split_into_clips(name: str, frames: np.ndarray, num_frames: int) -> list[Clip]:
    """The consecutive non-overlapping `num_frames`-frame clips of one long (T, H, W, 3) uint8 video."""
    return [Clip(f"{name}[{start}:{start + num_frames}]", unit_frames(frames[start:start + num_frames]))
            for start in range(0, frames.shape[0] - num_frames + 1, num_frames)]


def open_video_set(spec: str, max_frames: Optional[int] = None) -> VideoSet:
    """A folder of videos (of which the first `max_frames` frames are decoded), or a glob of ArrayRecord
    clip shards (e.g. 'data/ucf101/test-*.array_record')."""
    if not spec:
        raise ValueError("no reference videos: set eval.reference to a folder of videos or a glob of clip shards")
    path = pathlib.Path(spec)
    if path.is_dir():
        return FolderSet(path, max_frames)
    if path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES:
        raise ValueError(f"eval.reference={spec!r} is one video; give the folder that holds the reference videos")
    return ShardSet(spec)


def clips_of_length(clips, num_frames: int, video_set: VideoSet) -> Iterator[Clip]:
    """The first `num_frames` frames of each clip (the protocols' 16); shorter clips are skipped."""
    for clip in clips:
        if clip.frames.shape[0] < num_frames:
            video_set.skip(clip.name, f"{clip.frames.shape[0]} frames, fewer than eval.num_frames={num_frames}")
            continue
        yield dataclasses.replace(clip, frames=clip.frames[:num_frames])


def batches(clips, batch_size: int) -> Iterator[list[Clip]]:
    """Consecutive clips in groups of at most `batch_size` with one frame shape each (one compile per shape)."""
    batch: list[Clip] = []
    for clip in clips:
        if batch and (len(batch) == batch_size or clip.frames.shape != batch[0].frames.shape):
            yield batch
            batch = []
        batch.append(clip)
    if batch:
        yield batch
