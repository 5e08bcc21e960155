"""The clip record schema and shard files: exact round trips, clear errors on bad bytes."""
import io
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from PIL import Image

from lumiere_jax.data import schema, shards


def smooth_frames(t=5, h=24, w=32, seed=0):
    """Low-frequency content (what video mostly is), so JPEG error stays small."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    frames = []
    for i in range(t):
        phase = rng.uniform(0, 2 * np.pi, 3)
        channels = [127.5 + 100 * np.sin(2 * np.pi * (x + 0.5 * y) + p + 0.3 * i) for p in phase]
        frames.append(np.stack(channels, -1))
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def full_record(codec_seed=0):
    rng = np.random.default_rng(codec_seed)
    return schema.ClipRecord(
        id="clip-1",
        caption="a red circle moving left",
        frames=smooth_frames(),
        fps=16.0,
        hires={48: smooth_frames(h=48, w=64, seed=1)},
        annotations={"positions": rng.random((5, 2)).astype(np.float32)},
        text_embeddings=rng.standard_normal((7, 6)).astype(np.float32),
        text_mask=np.array([1, 1, 1, 0, 0, 0, 0]),
        meta={"source": "x.mp4", "start_time": 1.5},
    )


@pytest.mark.parametrize("codec", ["raw", "png"])
def test_lossless_codecs_round_trip_exactly(codec):
    record = full_record()
    back = schema.decode_record(schema.encode_record(record, codec))
    np.testing.assert_array_equal(back.frames, record.frames)
    np.testing.assert_array_equal(back.hires[48], record.hires[48])
    np.testing.assert_array_equal(back.annotations["positions"], record.annotations["positions"])
    assert back.text_embeddings.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.text_embeddings, record.text_embeddings.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(back.text_mask, record.text_mask.astype(bool))
    assert (back.id, back.caption, back.fps, back.meta) == (record.id, record.caption, record.fps, record.meta)


def test_jpeg_round_trip_is_pil_jpeg_of_each_frame():
    """Decoded frames are exactly what PIL's own JPEG round trip of each frame gives (the
    independent reference), and that loss is small (PSNR > 35 dB) on smooth content."""
    record = full_record()
    back = schema.decode_record(schema.encode_record(record, "jpeg", quality=90))
    for frame, got in zip(record.frames, back.frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=90)
        np.testing.assert_array_equal(got, np.asarray(Image.open(buf)))
    mse = np.mean((back.frames.astype(float) - record.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35.0  # PSNR in dB


def test_partial_decode_matches_full_decode():
    view = schema.parse_record(schema.encode_record(full_record(), "png"))
    assert view.sizes == (24, 48) and view.shape == (5, 24, 32, 3) and view.num_frames == 5
    full = view.frames()
    np.testing.assert_array_equal(view.frames(1, 4), full[1:4])
    np.testing.assert_array_equal(view.frames(2, 3, size=48), full_record().hires[48][2:3])
    with pytest.raises(IndexError, match="outside its 5 frames"):
        view.frames(3, 6)
    with pytest.raises(KeyError, match="heights"):
        view.frames(size=64)


def test_image_is_a_one_frame_record():
    image = schema.ClipRecord(id="img", caption="a cat", frames=smooth_frames(t=1), fps=1.0)
    view = schema.parse_record(schema.encode_record(image))
    assert view.num_frames == 1 and view.array_names == ()


def _with_version(data: bytes, version: int) -> bytes:
    magic, _, head_len = struct.unpack_from("<4sHI", data)
    return struct.pack("<4sHI", magic, version, head_len) + data[10:]


def test_malformed_records_are_named_errors():
    data = schema.encode_record(full_record(), "raw")
    cases = {
        b"not a record at all": "not a lumiere_jax clip record",
        data[:6]: "shorter than",
        _with_version(data, 7): "schema version 7 is unknown",
        data[:-10]: "truncated",
        data[:10] + b"[" + data[11:]: "not valid JSON",
    }
    for bad, message in cases.items():
        with pytest.raises(schema.RecordError, match=message):
            schema.parse_record(bad)


def _codec(header):
    header["frames"]["codec"] = "gif"


def _lone_embeddings(header):
    del header["arrays"]["text_mask"]


def _bad_hires_key(header):
    header["hires"]["24"] = header["hires"].pop("48")


@pytest.mark.parametrize(
    "change, message",
    [(_codec, "codec"), (_lone_embeddings, "they come together"), (_bad_hires_key, "new frame height")],
)
def test_header_fields_are_checked(change, message):
    data = schema.encode_record(full_record(), "raw")
    head_len = struct.unpack_from("<4sHI", data)[2]
    header = json.loads(data[10 : 10 + head_len])
    change(header)
    head = json.dumps(header).encode()
    bad = struct.pack("<4sHI", schema.MAGIC, schema.SCHEMA_VERSION, len(head)) + head + data[10 + head_len :]
    with pytest.raises(schema.RecordError, match=message):
        schema.parse_record(bad)


def test_undecodable_frame_bytes_raise_naming_the_frame():
    record = full_record()
    data = bytearray(schema.encode_record(record, "jpeg"))
    first_jpeg = data.index(b"\xff\xd8\xff")  # start of frame 0's JPEG
    data[first_jpeg : first_jpeg + 3] = b"XXX"
    view = schema.parse_record(bytes(data))  # the layout is intact
    with pytest.raises(schema.RecordError, match="frame 0: jpeg bytes do not decode"):
        view.frames()
    np.testing.assert_array_equal(view.frames(1, 2).shape, (1, 24, 32, 3))


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(frames=np.zeros((2, 4, 4), np.uint8)), r"shape \(T, H, W, 3\)"),
        (dict(frames=np.zeros((2, 4, 4, 3), np.float32)), "uint8"),
        (dict(fps=0), "fps"),
        (dict(id=""), "id"),
        (dict(text_mask=None), "together"),
        (dict(text_mask=np.ones(3)), r"\(L, D\)"),
        (dict(hires={24: smooth_frames()}), "hires"),
        (dict(annotations={"a/b": np.zeros(2)}), "annotation name"),
        (dict(annotations={"names": np.array(["x"])}), "numeric"),
        (dict(meta={"x": object()}), "JSON"),
    ],
)
def test_invalid_records_are_refused_when_encoding(change, message):
    record = full_record()
    for key, value in change.items():
        setattr(record, key, value)
    with pytest.raises(ValueError, match=message):
        schema.encode_record(record)


def test_shard_writer_is_complete_or_absent(tmp_path):
    path = str(tmp_path / "s-00000-of-00001.array_record")
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(path) as writer:
            writer.write(full_record())
            raise RuntimeError("job died")
    assert os.listdir(tmp_path) == []
    records = [full_record(), full_record()]
    records[1].id = "clip-2"
    with shards.ShardWriter(path, codec="png") as writer:
        for r in records:
            writer.write(r)
    assert sorted(os.listdir(tmp_path)) == ["s-00000-of-00001.array_record", "s-00000-of-00001.jsonl"]
    assert [r.id for r in shards.iter_records(path)] == ["clip-1", "clip-2"]
    with open(shards.captions_path(path)) as f:
        assert [json.loads(line) for line in f] == [{"id": r.id, "caption": r.caption} for r in records]


def test_reader_names_a_file_that_is_not_a_shard(tmp_path):
    path = tmp_path / "fake.array_record"
    path.write_text("hello")
    with pytest.raises(ValueError, match="fake.array_record is not a readable ArrayRecord shard"):
        list(shards.iter_records(str(path)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(shards.iter_records(str(tmp_path / "missing.array_record")))
