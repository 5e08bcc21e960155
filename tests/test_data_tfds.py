"""tfds_to_shards on a mocked UCF101 (tfds.testing.mock_data: offline, random videos)."""
import glob
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from data_pipelines import clips, tfds_to_shards  # noqa: E402
from lumiere_jax.data import shards  # noqa: E402


def test_humanize_class_names():
    assert tfds_to_shards.humanize("ApplyEyeMakeup") == "apply eye makeup"
    assert tfds_to_shards.humanize("YoYo") == "yo yo"
    assert tfds_to_shards.humanize("PlayingDaf") == "playing daf"
    assert tfds_to_shards.humanize("snake_case_name") == "snake case name"


def test_ucf101_examples_become_captioned_clips(tmp_path, capsys):
    length, fps, source_fps = 8, 16, 25
    with tfds.testing.mock_data(num_examples=5):
        builder = tfds.builder("ucf101")
        names = builder.info.features["label"].names
        # Frames as the job sees them: stored JPEG bytes decoded by the Video feature.
        encoded = builder.as_dataset(split="train", shuffle_files=False, decoders={"video": tfds.decode.SkipDecoding()})
        video = builder.info.features["video"]
        examples = [
            {"label": int(e["label"]), "video": video.decode_example(e["video"]).numpy()} for e in encoded
        ]
        args = ["--dataset", "ucf101", "--output_dir", str(tmp_path), "--num_frames", str(length), "--sizes", "64",
                "--num_shards", "2", "--workers", "1", "--codec", "raw", "--caption_template", "a person {label}"]
        assert tfds_to_shards.main(args) == 0
    summary = json.loads(capsys.readouterr().out)

    expected = {}  # clip counts from the closed form: ceil(n * 16 / 25) frames at 16 fps
    for i, example in enumerate(examples):
        resampled = math.ceil(len(example["video"]) * fps / source_fps)
        expected[i] = (resampled - length) // length + 1 if resampled >= length else 0
    assert summary["records"] == sum(expected.values())
    too_short = sum(n == 0 for n in expected.values())
    assert summary["skipped"] == ({"too_short": too_short} if too_short else {})

    for k in range(2):
        path = glob.glob(os.path.join(tmp_path, f"tfds-0000{k}-of-00002.array_record"))[0]
        for record in shards.iter_records(path):
            index = int(record.meta["source"].rsplit("/", 1)[1])
            assert index % 2 == k  # shard k holds examples k, k + 2, ...
            example = examples[index]
            assert record.caption == "a person " + tfds_to_shards.humanize(names[example["label"]])
            assert record.meta["label"] == tfds_to_shards.humanize(names[example["label"]])  # the protocol's class
            assert record.frames.shape == (length, 64, 64, 3) and record.fps == fps
            first = record.meta["clip_index"] * length  # output frame j shows source frame floor(j * 25 / 16)
            source = example["video"][first * source_fps // fps]
            np.testing.assert_array_equal(record.frames[0], clips.resize_center_crop(Image.fromarray(source), 64))


def test_missing_features_are_named(tmp_path, capsys):
    with tfds.testing.mock_data(num_examples=1):
        args = ["--dataset", "ucf101", "--output_dir", str(tmp_path), "--caption_key", "caption"]
        assert tfds_to_shards.main(args) == 2
    assert "no text feature 'caption'" in capsys.readouterr().err
