"""Converts a tensorflow-datasets video dataset (UCF101, ...) into clip shards.

    pip install -e '.[tfds]'
    python -m data_pipelines.tfds_to_shards --dataset ucf101 --split train --output_dir data/ucf101
    python -m data_pipelines.tfds_to_shards --dataset my_videos --caption_key caption ...

The dataset must already be prepared in --data_dir (nothing is downloaded here). Each example's
video feature (found automatically, or --video_key) is resampled from --source_fps to --fps, cut
into --num_frames clips every --stride frames and centre-cropped to --sizes, exactly like
`prepare_videos`. Captions come from a text feature (--caption_key) or from a class label
(--label_key) through --caption_template, where {label} is the class name in words
("ApplyEyeMakeup" -> "apply eye makeup"). Shard k holds examples k, k + N, k + 2N, ...; video
bytes of the other examples are skipped undecoded. TensorFlow is imported only by this job.
"""
from __future__ import annotations

import argparse
import re
import sys
from fractions import Fraction
from typing import Any, Iterator, Optional

import numpy as np
from PIL import Image

from data_pipelines import clips as clip_lib
from data_pipelines import runner
from lumiere_jax.data.schema import ClipRecord

JOB = "tfds_to_shards"


def humanize(label: str) -> str:
    """A class name in words: 'ApplyEyeMakeup' -> 'apply eye makeup', 'YoYo' -> 'yo yo'."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", label)
    return " ".join(spaced.replace("_", " ").split()).lower()


def describe_features(builder, video_key: Optional[str], label_key: str, caption_key: Optional[str]) -> dict[str, Any]:
    """Finds the video feature and the caption source; errors name what the dataset offers."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    videos = [k for k, f in features.items() if isinstance(f, tfds.features.Video)]
    video_key = video_key or (videos[0] if videos else None)
    if video_key not in videos:
        raise runner.JobError(f"{builder.name} has no video feature {video_key!r}; its video features are {videos}")
    if caption_key is not None:
        if caption_key not in features or not isinstance(features[caption_key], tfds.features.Text):
            raise runner.JobError(f"{builder.name} has no text feature {caption_key!r}; features: {list(features)}")
        return {"video_key": video_key, "caption_key": caption_key, "label_key": None}
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise runner.JobError(
            f"{builder.name} has no class-label feature {label_key!r} (features: {list(features)}); "
            "pass --label_key or --caption_key"
        )
    return {"video_key": video_key, "caption_key": None, "label_key": label_key}


def example_caption(example: dict[str, Any], settings: dict[str, Any], label_names: Optional[list[str]]) -> str:
    """The example's text feature, or its class name in words through the caption template."""
    if settings["caption_key"]:
        text = example[settings["caption_key"]]
        return (text.decode("utf-8") if isinstance(text, bytes) else str(text)).strip()
    name = label_names[int(example[settings["label_key"]])]
    return settings["caption_template"].format(label=humanize(name))


def _to_image(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(frame[..., 0] if frame.shape[-1] == 1 else frame)  # grey becomes RGB later


def example_clips(
    key: str, example: dict[str, Any], settings: dict[str, Any], label_names: Optional[list[str]]
) -> Iterator[ClipRecord]:
    """The clips of one example's (T, H, W, C) uint8 video."""
    video = np.asarray(example[settings["video_key"]])
    if video.ndim != 4 or video.shape[-1] not in (1, 3) or video.dtype != np.uint8:
        raise runner.Skip("bad_video", f"video array {video.shape} {video.dtype}, expected (T, H, W, 1|3) uint8")
    if min(video.shape[1:3]) < max(settings["sizes"]):
        raise runner.Skip("resolution_below_target", f"{video.shape[2]}x{video.shape[1]} < {max(settings['sizes'])}")
    caption = example_caption(example, settings, label_names)
    # The class in words, kept beside the caption: the UCF101 protocol's prompts and class counts read it.
    label = {"label": humanize(label_names[int(example[settings["label_key"]])])} if label_names else {}
    if not caption:
        raise runner.Skip("no_caption", "empty caption")
    source_fps = Fraction(settings["source_fps"]).limit_denominator(1000)
    fps = Fraction(settings["fps"]).limit_denominator(1000)
    if source_fps < fps:
        raise runner.Skip("fps_below_target", f"{float(source_fps):g} fps source, {float(fps):g} fps target")
    timed = ((Fraction(i) / source_fps, frame) for i, frame in enumerate(video))
    stride = settings["stride"]
    for first, stacks in clip_lib.cut_clips(
        timed, _to_image, 1 / source_fps, fps, settings["num_frames"], stride, settings["sizes"]
    ):
        meta = {"start_time": float(first / fps), "source_fps": float(source_fps), "dataset": settings["dataset"],
                **label}
        yield clip_lib.clip_record(key, first // stride, caption, settings["fps"], stacks, meta)


def shard_fn(shard: tuple[int, int], settings: dict[str, Any], sink: runner.ShardSink) -> None:
    """Reads every num_shards-th example starting at `index`, decoding only those videos."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    index, count = shard
    builder = tfds.builder(settings["dataset"], data_dir=settings["data_dir"])
    video_key = settings["video_key"]
    decoders = {video_key: tfds.decode.SkipDecoding()}  # decode only this shard's examples, below
    ds = builder.as_dataset(split=settings["split"], shuffle_files=False, decoders=decoders)
    video_feature = builder.info.features[video_key]
    label_names = builder.info.features[settings["label_key"]].names if settings["label_key"] else None

    @tf.autograph.experimental.do_not_convert
    def decode_video(example):
        return {**example, video_key: video_feature.decode_example(example[video_key])}

    ds = ds.shard(count, index).map(decode_video)
    for j, example in enumerate(tfds.as_numpy(ds)):
        key = f"{settings['dataset']}/{settings['split']}/{index + j * count}"
        with sink.item(key):
            for record in example_clips(key, example, settings, label_names):
                sink.write(record)


def _num_examples(builder, split: str) -> Optional[int]:
    """Examples in `split` when the dataset's metadata knows (for the progress bar); a split
    name the prepared dataset does not have is an error here rather than in every shard."""
    splits = builder.info.splits
    if not splits:
        return None
    name = split.split("[")[0]
    if name not in splits:
        raise runner.JobError(f"{builder.name} has splits {sorted(splits)}, not {name!r}")
    return splits[split].num_examples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m data_pipelines.{JOB}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, help="tfds name, e.g. ucf101 or ucf101/ucf101_1_256")
    parser.add_argument("--split", default="train", help="tfds split (default: %(default)s)")
    parser.add_argument("--data_dir", default=None, help="tfds data directory (default: tfds' own)")
    parser.add_argument("--video_key", default=None, help="video feature (default: the first Video feature)")
    parser.add_argument("--label_key", default="label", help="ClassLabel feature for captions (default: %(default)s)")
    parser.add_argument("--caption_key", default=None, help="Text feature to use as caption instead of a label")
    parser.add_argument("--caption_template", default="a video of {label}", help="caption from a label (%(default)s)")
    parser.add_argument("--source_fps", type=float, default=25.0, help="frame rate of the dataset's videos (UCF101 25)")
    parser.add_argument("--fps", type=float, default=16.0, help="target frame rate (default: %(default)s)")
    parser.add_argument("--num_frames", type=int, default=80, help="frames per clip (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: --num_frames)")
    parser.add_argument("--sizes", default="128", help="square sizes; the smallest is the base (default: %(default)s)")
    runner.add_common_flags(parser, prefix="tfds")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner.check_common_flags(parser, args)
    if min(args.fps, args.source_fps) <= 0 or args.num_frames < 1 or (args.stride is not None and args.stride < 1):
        parser.error("--fps, --source_fps, --num_frames and --stride must be positive")
    if "{label}" not in args.caption_template and args.caption_key is None:
        parser.error("--caption_template must contain {label}")

    def run() -> dict:
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(args.dataset, data_dir=args.data_dir)
        except ValueError as e:  # DatasetNotFoundError and bad names
            raise runner.JobError(str(e)) from None
        settings = {
            "dataset": args.dataset,
            "split": args.split,
            "data_dir": args.data_dir,
            **describe_features(builder, args.video_key, args.label_key, args.caption_key),
            "caption_template": args.caption_template,
            "source_fps": args.source_fps,
            "fps": args.fps,
            "num_frames": args.num_frames,
            "stride": args.stride or args.num_frames,
            "sizes": runner.parse_sizes(parser, args.sizes),
            "codec": args.codec,
            "quality": args.quality,
        }
        total = _num_examples(builder, args.split)
        sizes = [None if total is None else len(range(k, total, args.num_shards)) for k in range(args.num_shards)]
        shards = [(k, args.num_shards) for k in range(args.num_shards)]
        tasks = runner.make_tasks(args.output_dir, args.prefix, shards, sizes)
        return runner.run_job(
            JOB, tasks, shard_fn, settings, args.output_dir, args.prefix, args.workers, args.overwrite
        )

    return runner.cli(run)


if __name__ == "__main__":
    sys.exit(main())
