"""Writes a folder of captioned images as image shards (1-frame records), e.g. a style's stills.

    python -m data_pipelines.prepare_images --image_dir styles/grey/ --output_dir data/style --sizes 32

Inputs: every PNG/JPEG/WebP/BMP under --image_dir (recursive, sorted) with a caption sidecar
`<name>.txt`. Each image is centre-cropped to a square and resized to each of --sizes (bicubic,
antialiased, as prepare_videos does for frames) and written as a record of one frame; training
reads such shards with `kind: image`. Images without a caption, unreadable or smaller than the
largest size are skipped and counted by reason. Re-running the same command keeps finished shards.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError

from data_pipelines import clips as clip_lib
from data_pipelines import runner
from lumiere_jax.data.schema import ClipRecord

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
JOB = "prepare_images"
IMAGE_FPS = 16.0  # a still has no frame rate, but the record schema needs a positive one


def image_record(item: dict[str, Any], settings: dict[str, Any]) -> ClipRecord:
    if not item["caption"]:
        raise runner.Skip("no_caption", "no <name>.txt caption sidecar, or an empty one")
    try:
        with Image.open(item["path"]) as image:
            image.load()
            stacks = {size: clip_lib.resize_center_crop(image, size)[None] for size in settings["sizes"]}
            source_size = list(image.size)
    except (UnidentifiedImageError, OSError) as e:
        raise runner.Skip("unreadable", str(e)) from None
    if min(source_size) < max(settings["sizes"]):
        raise runner.Skip("resolution_below_target", f"{source_size} is smaller than {max(settings['sizes'])}")
    base = min(stacks)
    return ClipRecord(
        id=hashlib.sha1(item["key"].encode("utf-8")).hexdigest()[:16],
        caption=item["caption"],
        frames=stacks[base],
        fps=IMAGE_FPS,
        hires={size: stack for size, stack in stacks.items() if size != base},
        meta={"source": item["key"], "source_size": source_size},
    )


def shard_fn(items: list[dict[str, Any]], settings: dict[str, Any], sink: runner.ShardSink) -> None:
    for item in items:
        with sink.item(item["key"]):
            sink.write(image_record(item, settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m data_pipelines.{JOB}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_dir", required=True, help="folder of images, each with a <name>.txt caption")
    parser.add_argument("--sizes", default="128", help="square sizes, e.g. 32,128; the smallest is the base")
    runner.add_common_flags(parser, prefix="images")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    runner.check_common_flags(parser, args)
    settings = {"sizes": runner.parse_sizes(parser, args.sizes), "codec": args.codec, "quality": args.quality}

    def run() -> dict:
        items = runner.captioned_files(args.image_dir, IMAGE_EXTENSIONS, "--image_dir")
        if not items:
            raise runner.JobError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {args.image_dir}")
        per_shard = [items[k::args.num_shards] for k in range(args.num_shards)]
        tasks = runner.make_tasks(args.output_dir, args.prefix, per_shard, [len(p) for p in per_shard],
                                  runner.file_items_identity)
        return runner.run_job(JOB, tasks, shard_fn, settings, args.output_dir, args.prefix, args.workers, args.overwrite)

    return runner.cli(run)


if __name__ == "__main__":
    sys.exit(main())
