"""The Grain input pipeline: global batches, mixing, crops, bad records, start-up errors, resume."""
import ml_collections
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest

import grain
from array_record.python import array_record_module
from lumiere_jax.config import base_config
from lumiere_jax.data import pipeline as pipeline_module
from lumiere_jax.data import schema, shards
from lumiere_jax.data.pipeline import DataPipeline, host_dataset, make_pipeline
from lumiere_jax.parallel import logical_axis_rules, make_mesh
from lumiere_jax.text.embedding_store import EmbeddingShardWriter, shard_directory

T, FRAMES, SIZE, HIRES = 12, 8, 16, 32  # records hold 12 frames; the pipeline takes 8


def video_record(i, num_frames=T, text=False):
    rng = np.random.default_rng(i)
    return schema.ClipRecord(
        id=f"video-{i:03d}",
        caption=f"video number {i}",
        frames=rng.integers(0, 256, (num_frames, SIZE, SIZE, 3), dtype=np.uint8),
        fps=16.0,
        hires={HIRES: rng.integers(0, 256, (num_frames, HIRES, HIRES, 3), dtype=np.uint8)},
        text_embeddings=rng.standard_normal((4, 6)).astype(np.float32) if text else None,
        text_mask=np.arange(4) < 1 + i % 4 if text else None,
    )


def image_record(i):
    rng = np.random.default_rng(1000 + i)
    frames = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    hires = {HIRES: rng.integers(0, 256, (1, HIRES, HIRES, 3), dtype=np.uint8)}
    return schema.ClipRecord(id=f"image-{i:03d}", caption=f"image number {i}", frames=frames, fps=1.0, hires=hires)


def write(path, records, codec="raw"):
    with shards.ShardWriter(str(path), codec=codec) as writer:
        for r in records:
            writer.write(r)
    return str(path)


def config(*sources, **data):
    c = base_config()
    c.data.update(
        dict(num_frames=FRAMES, resolution=SIZE, batch_size=8, num_workers=0, read_threads=1, read_buffer_size=4)
    )
    c.data.update(data)
    c.data.sources = [ml_collections.ConfigDict(dict(zip(("glob", "weight", "kind"), s))) for s in sources]
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    videos = [video_record(i) for i in range(24)]
    write(d / "videos-00000-of-00002.array_record", videos[:12])
    write(d / "videos-00001-of-00002.array_record", videos[12:])
    write(d / "images-00000-of-00001.array_record", [image_record(i) for i in range(8)])
    return d, {r.id: r for r in videos + [image_record(i) for i in range(8)]}


def window_start(record_frames, clip):
    """The s with clip == record_frames[s:s + len(clip)] (or its mirror image), and whether mirrored."""
    for s in range(len(record_frames) - len(clip) + 1):
        window = record_frames[s : s + len(clip)]
        for flipped in (False, True):
            if np.array_equal(clip, window[:, :, ::-1] if flipped else window):
                return s, flipped
    raise AssertionError("the clip is no window of its record")


def to_uint8(video):
    """[-1, 1] back to the stored bytes; exact when the pipeline scaled by 1/127.5 and shifted."""
    restored = np.round((np.asarray(video, np.float64) + 1.0) * 127.5)
    np.testing.assert_allclose(restored, (np.asarray(video, np.float64) + 1.0) * 127.5, atol=1e-4)
    return restored.astype(np.uint8)


def test_global_batches_on_the_mesh(data_dir):
    d, records = data_dir
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    c = config((str(d / "videos-*"), 1.0, "video"), (str(d / "images-*"), 1.0, "image"), hires_resolution=HIRES)
    with make_pipeline(c, mesh) as pipeline:
        batches = [next(pipeline) for _ in range(3)]
    kinds = set()
    for batch in batches:  # mix_by='batch' (default): each batch is all videos or all images
        is_image = np.asarray(batch["is_image"])
        assert (is_image.all() or not is_image.any()) and batch["image_batch"] == bool(is_image[0])
        assert batch["video"].shape == (8, FRAMES, SIZE, SIZE, 3) and batch["video"].dtype == np.float32
        assert batch["video_hires"].shape == (8, FRAMES, HIRES, HIRES, 3)
        assert batch["video"].sharding.spec[0] == ("data", "fsdp") and batch["is_image"].shape == (8,)
        assert float(batch["video"].min()) >= -1.0 and float(batch["video"].max()) <= 1.0
        assert batch["skipped"] == 0
        video, hires = to_uint8(batch["video"]), to_uint8(batch["video_hires"])
        for row, record_id in enumerate(batch["id"]):
            record = records[record_id]
            assert batch["caption"][row] == record.caption
            assert is_image[row] == record_id.startswith("image")
            kinds.add(bool(is_image[row]))
            if is_image[row]:  # an image is its one frame repeated over time
                np.testing.assert_array_equal(video[row], np.broadcast_to(record.frames[0], video[row].shape))
                np.testing.assert_array_equal(hires[row], np.broadcast_to(record.hires[HIRES][0], hires[row].shape))
                continue
            start, flipped = window_start(record.frames, video[row])
            assert not flipped  # random_flip is off by default
            np.testing.assert_array_equal(hires[row], record.hires[HIRES][start : start + FRAMES])
    assert kinds == {False, True}


def test_mixing_by_batch_follows_the_weights(data_dir):
    """3:1 weights: every fourth batch is an image batch; every batch is of one kind."""
    d, _ = data_dir
    c = config((str(d / "videos-*"), 3.0, "video"), (str(d / "images-*"), 1.0, "image"), batch_size=4)
    iterator = iter(host_dataset(c))
    kinds = []
    for _ in range(8):
        is_image = next(iterator)["is_image"]
        assert is_image.all() or not is_image.any()
        kinds.append(bool(is_image[0]))
    assert kinds == [False, False, False, True] * 2


def test_mixing_by_example_weights_crops_and_flips(data_dir, monkeypatch):
    """A 3:1 video:image mix interleaves exactly 300:100 per 400 elements; with the order
    shuffled within 400-element windows, every window holds exactly 100 images, in random
    places. Temporal crops start anywhere in the record; flips mirror about half the clips."""
    monkeypatch.setattr(pipeline_module, "_MIX_WINDOW", 400)
    d, records = data_dir
    c = config((str(d / "videos-*"), 3.0, "video"), (str(d / "images-*"), 1.0, "image"), batch_size=50,
               random_flip=True, mix_by="example")
    iterator = iter(host_dataset(c))
    batches = [next(iterator) for _ in range(16)]
    is_image = np.concatenate([b["is_image"] for b in batches])
    assert is_image[:400].sum() == 100 and is_image[400:].sum() == 100
    assert len({tuple(np.nonzero(b["is_image"])[0]) for b in batches}) > 8  # not a fixed pattern
    starts, flips, videos = set(), 0, 0
    for batch in batches:
        for row in np.nonzero(~batch["is_image"])[0]:
            start, flipped = window_start(records[batch["id"][row]].frames, batch["video"][row])
            starts.add(start)
            flips += flipped
            videos += 1
    assert starts == set(range(T - FRAMES + 1))
    assert 0.4 < flips / videos < 0.6  # 600 fair coin flips: 5 standard deviations either side


def bad_shards(d):
    """A shard with 10 good records and 4 unusable ones, and one with a damaged ArrayRecord chunk."""
    good = [video_record(100 + i) for i in range(10)]
    broken_jpeg = bytearray(schema.encode_record(video_record(200), "jpeg"))
    start = -1
    for _ in range(7):  # frame 6: in every 8-frame window of the 12
        start = broken_jpeg.index(b"\xff\xd8\xff", start + 1)
    broken_jpeg[start : start + 3] = b"BAD"
    raw = [schema.encode_record(r) for r in good] + [
        b"definitely not a record",
        schema.encode_record(video_record(201))[:-7],  # truncated
        bytes(broken_jpeg),  # a frame that does not decode
        schema.encode_record(video_record(202, num_frames=4)),  # shorter than data.num_frames
    ]
    path = d / "bad-00000-of-00002.array_record"
    writer = array_record_module.ArrayRecordWriter(str(path), shards.writer_options("raw"))
    for data in raw:
        writer.write(data)
    writer.close()
    # PNG frames: the shard stores records uncompressed, so record 1's bytes can be found and hit.
    damaged = write(d / "bad-00001-of-00002.array_record", [video_record(300 + i) for i in range(3)], codec="png")
    content = bytearray(open(damaged, "rb").read())
    middle = content.index(b'"id":"video-301"') + 500
    content[middle : middle + 16] = bytes(16)
    open(damaged, "wb").write(bytes(content))
    return {r.id for r in good} | {f"video-{300 + i}" for i in (0, 2)}


def test_bad_records_are_skipped_and_counted(tmp_path):
    good = bad_shards(tmp_path)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    c = config((str(tmp_path / "bad-*.array_record"), 1.0, "video"), batch_size=4)
    with DataPipeline(c, mesh, logical_axis_rules(None)) as pipeline:
        first_epoch = [next(pipeline) for _ in range(3)]  # 12 good records make an epoch
        second_epoch = [next(pipeline) for _ in range(3)]
        skipped = sum(b["skipped"] for b in first_epoch + second_epoch)
        assert pipeline.num_skipped == skipped
    assert sorted(i for b in first_epoch for i in b["id"]) == sorted(good)
    assert {i for b in second_epoch for i in b["id"]} == good
    assert 5 <= skipped <= 10  # all 5 bad ones of epoch 1, and those of epoch 2 met so far


def test_a_run_of_bad_records_stops_with_a_clear_error(tmp_path):
    path = tmp_path / "mostly-bad.array_record"
    writer = array_record_module.ArrayRecordWriter(str(path), shards.writer_options("raw"))
    writer.write(schema.encode_record(video_record(0)))
    for _ in range(20):
        writer.write(b"garbage")
    writer.close()
    c = config((str(path), 1.0, "video"), batch_size=2, max_consecutive_corrupt=5)
    iterator = iter(host_dataset(c))
    with pytest.raises(RuntimeError, match="5 records in a row could not be used"):
        for _ in range(20):
            next(iterator)


@pytest.mark.parametrize(
    "sources, overrides, message",
    [
        ([], {}, "data.sources is empty"),
        ([("{tmp}/nothing-*.array_record", 1.0, "video")], {}, r"glob '.*nothing-\*.array_record' matches no shard"),
        ([("{tmp}/*", 1.0, "video")], {}, "it matched only"),
        ([("{videos}", 1.0, "movie")], {}, "kind must be one of"),
        ([("{videos}", 0.0, "video")], {}, "weight must be a positive number"),
        ([("{videos}", 1.0, "video")], {"num_frames": 16}, "12 frames, fewer than data.num_frames=16"),
        ([("{videos}", 1.0, "video")], {"resolution": 64}, r"heights \(16, 32\), not 64"),
        ([("{videos}", 1.0, "video")], {"text_embeddings": True}, "has no text embeddings"),
        ([("{videos}", 1.0, "video")], {"batch_size": 7, "process_count": 2}, "multiple of the 2 processes"),
        ([("{videos}", 1.0, "video")], {"unknown_key": 3}, "unknown keys"),
        ([("{videos}", 1.0, "video")], {"mix_by": "epoch"}, "mix_by must be one of"),
    ],
)
def test_start_up_errors_name_the_problem(data_dir, tmp_path, sources, overrides, message):
    d, _ = data_dir
    (tmp_path / "notes.txt").write_text("hi")
    names = {"tmp": str(tmp_path), "videos": str(d / "videos-*")}
    overrides = dict(overrides)
    process_count = overrides.pop("process_count", 1)
    extra_key = overrides.pop("unknown_key", None)
    c = config(*[(g.format(**names), w, k) for g, w, k in sources], **overrides)
    if extra_key is not None:
        c.data.sources[0].shards = extra_key
    with pytest.raises(ValueError, match=message):
        host_dataset(c, process_index=0, process_count=process_count)


def test_batch_must_divide_over_the_mesh(data_dir):
    d, _ = data_dir
    with pytest.raises(ValueError, match="multiple of 4, the number of batch shards"):
        c = config((str(d / "videos-*"), 1.0, "video"), batch_size=6)
        DataPipeline(c, make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), logical_axis_rules(None))


def batches_equal(a, b):
    assert list(a["id"]) == list(b["id"])
    np.testing.assert_array_equal(np.asarray(a["video"]), np.asarray(b["video"]))


@pytest.mark.parametrize("mix_by", ["batch", "example"])
def test_resume_from_iterator_state_is_exact(data_dir, mix_by):
    d, _ = data_dir
    sources = (str(d / "videos-*"), 2.0, "video"), (str(d / "images-*"), 1.0, "image")
    c = config(*sources, random_flip=True, mix_by=mix_by)
    c.seed = 5
    run = iter(host_dataset(c))
    for _ in range(5):  # past the end of an epoch
        next(run)
    state = run.get_state()
    expected = [next(run) for _ in range(4)]
    resumed = iter(host_dataset(c))
    resumed.set_state(state)
    for want in expected:
        batches_equal(next(resumed), want)


def test_resume_through_orbax_with_worker_processes(data_dir, tmp_path):
    d, _ = data_dir
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    c = config((str(d / "videos-*"), 1.0, "video"), num_workers=2, random_flip=True)
    manager = ocp.CheckpointManager(tmp_path / "ckpt")
    with DataPipeline(c, mesh, logical_axis_rules(None)) as pipeline:
        for _ in range(3):
            next(pipeline)
        manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(pipeline.iterator)))
        manager.wait_until_finished()
        expected = [next(pipeline) for _ in range(3)]
    with DataPipeline(c, mesh, logical_axis_rules(None)) as pipeline:
        manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(pipeline.iterator)))
        for want in expected:
            batches_equal(next(pipeline), want)
    manager.close()


def test_text_embeddings_inline_and_from_the_store(tmp_path):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    inline = [video_record(i, text=True) for i in range(8)]
    write(tmp_path / "inline-00000-of-00001.array_record", inline)
    stored = [video_record(50 + i, text=True) for i in range(9)]
    shard = write(tmp_path / "stored-00000-of-00001.array_record",
                  [schema.ClipRecord(r.id, r.caption, r.frames, r.fps) for r in stored])  # no inline embeddings
    rows = stored[:8]  # the last record has no row in the store: skipped and counted
    writer = EmbeddingShardWriter(shard_directory(str(tmp_path), shard), len(rows), 4, 6, {})
    writer.write(0, np.stack([r.text_embeddings for r in rows]).astype(ml_dtypes.bfloat16),
                 np.stack([r.text_mask for r in rows]), np.zeros((len(rows), 4), np.int32))
    writer.close([r.id for r in rows])
    expected = {r.id: r for r in inline + stored}
    for name, skipped, workers in (("inline", {0}, 0), ("stored", {1, 2}, 1)):
        c = config((str(tmp_path / f"{name}-*.array_record"), 1.0, "video"), text_embeddings=True, num_workers=workers)
        c.text.max_length = 4
        with DataPipeline(c, mesh, logical_axis_rules(None)) as pipeline:
            batches = [next(pipeline) for _ in range(2)]  # two epochs of the 8 usable records
        # The record without embeddings is dropped once per epoch: once or twice in these batches.
        assert sum(b["skipped"] for b in batches) in skipped
        for batch in batches:
            assert batch["text_embeddings"].dtype == ml_dtypes.bfloat16 and batch["text_embeddings"].shape == (8, 4, 6)
            assert batch["text_mask"].dtype == np.bool_
            for row, record_id in enumerate(batch["id"]):
                record = expected[record_id]
                np.testing.assert_array_equal(np.asarray(batch["text_embeddings"][row]),
                                              record.text_embeddings.astype(ml_dtypes.bfloat16))
                np.testing.assert_array_equal(np.asarray(batch["text_mask"][row]), record.text_mask)


@pytest.mark.parametrize("text_embeddings, vocabulary, error, message", [
    (True, "demo/checkpoint/vocab.model", ValueError, "set data.text_embeddings=False"),
    (False, "no/such/vocab.model", FileNotFoundError, "sentencepiece vocabulary 'no/such/vocab.model' does not exist"),
])
def test_in_step_encoding_refuses_a_second_text_source_and_a_missing_vocabulary(
        repo_root, text_embeddings, vocabulary, error, message):
    config = base_config()
    config.text.update(encode_in_step=True, vocabulary=str(vocabulary), max_length=8)
    config.data.text_embeddings = text_embeddings
    with pytest.raises(error, match=message):
        pipeline_module.caption_tokens(config)


def test_caption_tokens_survive_pickling_into_a_worker(repo_root):
    """Grain's workers unpickle the transform: the tokenizer is rebuilt there and gives the same ids."""
    import pickle

    config = base_config()
    config.text.update(encode_in_step=True, vocabulary=str(repo_root / "demo/checkpoint/vocab.model"), max_length=8)
    tokens = pipeline_module.caption_tokens(config)
    ids, mask = tokens("a red circle moving left")
    again, again_mask = pickle.loads(pickle.dumps(tokens))("a red circle moving left")
    np.testing.assert_array_equal(ids, again)
    np.testing.assert_array_equal(mask, again_mask)
    assert ids.shape == (8,) and ids.dtype == np.int32 and mask.sum() == 6 and ids[5] == 1  # five words, EOS
