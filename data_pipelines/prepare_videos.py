"""Cuts captioned videos into fixed-length clips at a fixed frame rate and writes clip shards.

    python -m data_pipelines.prepare_videos --manifest videos.csv --output_dir data/clips
    python -m data_pipelines.prepare_videos --video_dir raw/ --output_dir data/clips --sizes 128,512

Inputs: a manifest (CSV with a header, or JSONL) with `path` and `caption` and optional `start`
and `end` in seconds (relative paths are relative to the manifest), or a folder of videos each
with a caption sidecar `<name>.txt`. Every video is decoded with PyAV, resampled to --fps
(sample and hold), cut into --num_frames clips every --stride frames, and every frame is
centre-cropped to a square and resized to each of --sizes. Videos that are missing, unreadable,
corrupt, too short, too small or too slow (fps below the target) are skipped and counted by
reason in the summary. Shards are assigned videos round-robin; re-running the same command
keeps the finished shards and writes the rest, also after the videos (and the manifest, whose
relative paths then still hold) moved elsewhere: a shard is checked against its videos' keys,
captions, segments and contents, not their locations (see `runner.file_items_identity`).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from fractions import Fraction
from typing import Any, Iterator, Optional

import av

from data_pipelines import clips as clip_lib
from data_pipelines import runner
from lumiere_jax.data.schema import ClipRecord

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
JOB = "prepare_videos"


# ------------------------------------------------------------------------------------- inputs


def read_manifest(path: str) -> list[dict[str, Any]]:
    """Manifest rows as items {path, key, caption, start, end}; a row that cannot be used keeps
    its problem in 'error' so it is counted with the other skipped inputs."""
    if not os.path.isfile(path):
        raise runner.JobError(f"manifest {path} does not exist")
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8", newline="") as f:
        rows = _jsonl_rows(f) if path.endswith((".jsonl", ".json")) else _csv_rows(f, path)
        return [_manifest_item(row, root, n) for n, row in enumerate(rows, start=1)]


def _csv_rows(f, path: str) -> Iterator[Any]:
    reader = csv.DictReader(f)
    missing = {"path", "caption"} - set(reader.fieldnames or ())
    if missing:
        raise runner.JobError(
            f"manifest {path} has columns {reader.fieldnames}; it needs 'path' and 'caption' "
            "(and optionally 'start' and 'end' in seconds)"
        )
    return iter(reader)


def _jsonl_rows(f) -> Iterator[Any]:
    for line in f:
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield {"error": f"not JSON ({e})"}


def _manifest_item(row: Any, root: str, line: int) -> dict[str, Any]:
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
        error = row.get("error", "no 'path'") if isinstance(row, dict) else "not an object"
        return {"key": f"manifest row {line}", "error": error}
    item = {"key": row["path"], "path": os.path.join(root, row["path"]), "caption": str(row.get("caption") or "")}
    try:
        item["start"] = float(row["start"]) if row.get("start") not in (None, "") else 0.0
        item["end"] = float(row["end"]) if row.get("end") not in (None, "") else None
    except (TypeError, ValueError):
        item["error"] = f"start/end {row.get('start')!r}/{row.get('end')!r} are not numbers of seconds"
        return item
    if item["start"] < 0 or (item["end"] is not None and item["end"] <= item["start"]):
        item["error"] = f"segment [{item['start']}, {item['end']}) is empty or negative"
    if item["start"] or item["end"] is not None:
        item["key"] = f"{item['key']}[{item['start']}:{item['end']}]"  # one id space per segment
    return item


def scan_folder(root: str) -> list[dict[str, Any]]:
    """Every video under `root` (sorted, recursive) with the caption from its .txt sidecar."""
    return [dict(item, start=0.0, end=None) for item in runner.captioned_files(root, VIDEO_EXTENSIONS, "--video_dir")]


# ------------------------------------------------------------------------------------ decoding


class _Progress:
    """How far decoding got, so a file that ends early can be told from a short one."""

    last_time = Fraction(-1)


def timed_frames(container, stream, progress: _Progress) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """Decoded frames with presentation times in seconds from the stream start.

    A container stores times rounded to its time base (Matroska: milliseconds, so a 16 fps frame
    meant for 62.5 ms says 63 ms); each time is moved half a tick earlier, so that rounding never
    makes a frame miss the output instant it was meant for, and an exact time still shows exactly.
    """
    origin = stream.start_time or 0
    period = frame_period(stream)
    half_tick = Fraction(stream.time_base) / 2
    t = Fraction(0)
    for frame in container.decode(stream):
        t = Fraction(frame.pts - origin) * stream.time_base if frame.pts is not None else t + period
        progress.last_time = t
        yield t - half_tick, frame


def frame_period(stream) -> Fraction:
    """Seconds per source frame (how long the last frame stays on screen)."""
    rate = stream.average_rate or stream.guessed_rate
    return 1 / Fraction(rate) if rate else Fraction(1, 25)


def _check_complete(stream, progress: _Progress, end: Optional[Fraction]) -> None:
    """Skip('corrupt') when decoding stopped more than two frames short of the duration the file
    declares (or of the segment end): the file is truncated or damaged past that point."""
    if stream.duration is None:
        return
    declared = Fraction(stream.duration) * stream.time_base
    wanted = declared if end is None else min(declared, end)
    if progress.last_time + 2 * frame_period(stream) < wanted:
        stopped = f"decoding stopped at {float(progress.last_time):.2f} s of {float(wanted):.2f} s"
        raise runner.Skip("corrupt", f"{stopped} (clips before kept)")


def video_clips(item: dict[str, Any], settings: dict[str, Any]) -> Iterator[ClipRecord]:
    """The clips of one video; raises runner.Skip (after the clips it could make) when unusable.

    Decoding is single-threaded: PyAV's threaded decoder ends quietly at damaged data instead of
    raising, and the job's parallelism comes from its worker processes anyway.
    """
    if "error" in item:
        raise runner.Skip("bad_manifest_row", item["error"])
    if not item["caption"]:
        raise runner.Skip("no_caption", "empty caption (or no .txt sidecar)")
    if not os.path.isfile(item["path"]):
        raise runner.Skip("missing", item["path"])
    fps = Fraction(settings["fps"]).limit_denominator(1000)
    try:
        container = av.open(item["path"])
    except av.error.FFmpegError as e:
        raise runner.Skip("unreadable", str(e)) from None
    with container:
        if not container.streams.video:
            raise runner.Skip("no_video_stream", "the file has no video stream")
        stream = container.streams.video[0]
        _check_stream(stream, fps, settings)
        start = Fraction(item["start"]).limit_denominator(10**6)
        if start:
            container.seek(int(start / stream.time_base) + (stream.start_time or 0), stream=stream)
        end = None if item["end"] is None else Fraction(item["end"]).limit_denominator(10**6)
        source = {"source_fps": float(1 / frame_period(stream)), "source_size": [stream.width, stream.height]}
        progress = _Progress()
        clips = clip_lib.cut_clips(
            timed_frames(container, stream, progress),
            to_image=av.VideoFrame.to_image,
            frame_period=frame_period(stream),
            fps=fps,
            length=settings["num_frames"],
            stride=settings["stride"],
            sizes=settings["sizes"],
            start=start,
            end=end,
        )
        try:
            for first, stacks in clips:
                meta = dict(source, start_time=float(start + first / fps))
                index = first // settings["stride"]
                yield clip_lib.clip_record(item["key"], index, item["caption"], settings["fps"], stacks, meta)
        except av.error.FFmpegError as e:
            raise runner.Skip("corrupt", f"decoding failed ({e}); clips before the damage were kept") from None
        except runner.Skip:  # too short: unless it is short because it is cut off
            _check_complete(stream, progress, end)
            raise
        _check_complete(stream, progress, end)


def _check_stream(stream, fps: Fraction, settings: dict[str, Any]) -> None:
    if not stream.width or not stream.height:
        raise runner.Skip("unreadable", "the video stream has no frame size")
    if min(stream.width, stream.height) < max(settings["sizes"]):
        size, largest = f"{stream.width}x{stream.height}", max(settings["sizes"])
        raise runner.Skip("resolution_below_target", f"{size} is smaller than the largest size {largest}")
    rate = stream.average_rate
    if rate and Fraction(rate) < fps:
        raise runner.Skip("fps_below_target", f"{float(rate):.3g} fps source, {float(fps):g} fps target")


def shard_fn(items: list[dict[str, Any]], settings: dict[str, Any], sink: runner.ShardSink) -> None:
    for item in items:
        with sink.item(item["key"]):
            for record in video_clips(item, settings):
                sink.write(record)


# ----------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_pipelines.{JOB}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--manifest", help="CSV (header: path,caption[,start,end]) or JSONL with the same keys")
    inputs.add_argument("--video_dir", help="folder of videos, each with a <name>.txt caption sidecar")
    parser.add_argument("--fps", type=float, default=16.0, help="target frame rate (default: %(default)s)")
    parser.add_argument("--num_frames", type=int, default=80, help="frames per clip (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: --num_frames)")
    parser.add_argument(
        "--sizes", default="128", help="square sizes, e.g. 128,512; the smallest is the base (default: %(default)s)"
    )
    runner.add_common_flags(parser, prefix="clips")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner.check_common_flags(parser, args)
    if args.fps <= 0 or args.num_frames < 1 or (args.stride is not None and args.stride < 1):
        parser.error("--fps, --num_frames and --stride must be positive")
    settings = {
        "fps": args.fps,
        "num_frames": args.num_frames,
        "stride": args.stride or args.num_frames,
        "sizes": runner.parse_sizes(parser, args.sizes),
        "codec": args.codec,
        "quality": args.quality,
    }

    def run() -> dict:
        items = read_manifest(args.manifest) if args.manifest else scan_folder(args.video_dir)
        if not items:
            raise runner.JobError(f"no videos found in {args.manifest or args.video_dir}")
        per_shard = [items[k :: args.num_shards] for k in range(args.num_shards)]
        sizes = [len(p) for p in per_shard]
        tasks = runner.make_tasks(args.output_dir, args.prefix, per_shard, sizes, runner.file_items_identity)
        return runner.run_job(
            JOB, tasks, shard_fn, settings, args.output_dir, args.prefix, args.workers, args.overwrite
        )

    return runner.cli(run)


if __name__ == "__main__":
    sys.exit(main())
