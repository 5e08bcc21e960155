"""A real learning test: the tiny STUNet trained through the Grain pipeline on synthetic shards.

Captions get a stand-in text embedding (one one-hot word per token, written in the
`<stem>.t5/` store format that `data_pipelines.encode_captions` produces), so the test needs no
T5 checkpoint; everything else is the production path: shards, pipeline, trainer, checkpoints.
"""
import json

import ml_dtypes
import numpy as np

from data_pipelines import synthetic
from lumiere_jax.text.embedding_store import EmbeddingShardWriter, shard_directory
from lumiere_jax.train.trainer import train
from train_helpers import train_config


def embed_captions(jsonl, max_length, dim):
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    vocabulary = {}
    writer = EmbeddingShardWriter(shard_directory(str(jsonl.parent), str(jsonl)), len(rows), max_length, dim, {})
    for i, row in enumerate(rows):
        words = row["caption"].split()[:max_length]
        emb = np.zeros((1, max_length, dim), np.float32)
        for j, word in enumerate(words):
            emb[0, j, vocabulary.setdefault(word, len(vocabulary) % dim)] = 1.0
        mask = (np.arange(max_length) < len(words))[None]
        writer.write(i, emb.astype(ml_dtypes.bfloat16), mask, np.zeros((1, max_length), np.int32))
    writer.close([row["id"] for row in rows])


def make_shards(directory, kind, count, config):
    assert synthetic.main(["--output_dir", str(directory), "--num_examples", str(count), "--kind", kind,
                           "--num_frames", str(config.data.num_frames), "--sizes", str(config.data.resolution),
                           "--num_shards", "1", "--workers", "1"]) == 0
    for jsonl in directory.glob("*.jsonl"):
        embed_captions(jsonl, config.text.max_length, config.model.text_dim)
    return str(directory / "*.array_record")


def test_tiny_stunet_learns_synthetic_shapes_with_joint_image_batches(tmp_path):
    config = train_config(steps=40)
    config.train.log_every = 5
    config.train.checkpoint_every = 40
    config.train.learning_rate = 3e-3
    config.data.text_embeddings = True
    config.data.num_workers = 0
    config.data.sources = [
        {"glob": make_shards(tmp_path / "clips", "video", 64, config), "weight": 1.0, "kind": "video"},
        {"glob": make_shards(tmp_path / "images", "image", 32, config), "weight": 0.25, "kind": "image"},
    ]
    summary = train(config, tmp_path / "run")
    losses = summary["losses"]
    assert summary["step"] == 40 and np.isfinite(losses).all()
    assert losses[-1] < 0.6 * losses[0], losses  # clearly learning, not noise
    assert summary["last_metrics"]["data/skipped_records"] == 0


def test_ssr_trains_on_pairs_made_from_high_resolution_shards(tmp_path):
    from configs import ssr_tiny

    config = ssr_tiny.get_config()
    config.data.batch_size = 8
    config.data.text_embeddings = True
    config.data.num_workers = 0
    config.train.num_steps = 12
    config.train.log_every = 4
    config.train.checkpoint_every = 12
    config.train.learning_rate = 3e-3
    config.train.warmup_steps = 1
    config.train.sample_every = 12  # EMA previews conditioned on the batch's low-res clips
    config.train.sample_steps = 2
    assert synthetic.main(["--output_dir", str(tmp_path / "clips"), "--num_examples", "32", "--num_frames", "4",
                           "--sizes", "16,32", "--num_shards", "1", "--workers", "1"]) == 0
    for jsonl in (tmp_path / "clips").glob("*.jsonl"):
        embed_captions(jsonl, config.text.max_length, config.model.text_dim)
    config.data.sources = [{"glob": str(tmp_path / "clips" / "*.array_record"), "weight": 1.0, "kind": "video"}]
    summary = train(config, tmp_path / "run")
    assert summary["step"] == 12 and summary["losses"][-1] < summary["losses"][0]
    from PIL import Image

    with Image.open(tmp_path / "run" / "samples" / "step_00000012" / "sample_0.gif") as gif:
        assert gif.size == (128, 128) and gif.n_frames == 4  # 32x32 enlarged 4x


def test_in_step_text_encoding_trains_on_real_shards_as_precomputed_embeddings_do(tmp_path, repo_root):
    """text.encode_in_step on shards from data_pipelines.synthetic: Grain's workers tokenize each
    caption with config.text's vocabulary and the step encodes the ids with the frozen encoder (the
    demo's seeded tiny T5). The same shards with that encoder's embeddings precomputed by
    data_pipelines.encode_captions train to the same losses, step for step."""
    from data_pipelines import encode_captions

    config = train_config(steps=4)
    config.text.update(encoder="tiny", checkpoint_format="seed", init_seed=0, max_length=8, dtype="float32",
                       vocabulary=str(repo_root / "demo" / "checkpoint" / "vocab.model"))
    config.train.checkpoint_every = 4
    assert synthetic.main(["--output_dir", str(tmp_path / "clips"), "--num_examples", "32", "--num_frames", "8",
                           "--sizes", "16", "--num_shards", "1", "--workers", "1"]) == 0
    config.data.sources = str(tmp_path / "clips" / "*.array_record")
    config.data.num_workers = 1  # both runs: the worker count decides which records share a batch

    config.text.encode_in_step, config.data.text_embeddings = True, False
    in_step = train(config, tmp_path / "in_step")

    encode_captions.main(["--input", str(tmp_path / "clips" / "*.jsonl"), "--encoder", "tiny",
                          "--checkpoint_format", "seed", "--init_seed", "0", "--vocabulary", config.text.vocabulary,
                          "--max_length", "8", "--dtype", "float32", "--batch_size", "8"])
    config.text.encode_in_step, config.data.text_embeddings = False, True
    precomputed = train(config, tmp_path / "precomputed")

    assert in_step["step"] == precomputed["step"] == 4
    assert in_step["losses"][-1] < in_step["losses"][0]
    np.testing.assert_allclose(in_step["losses"], precomputed["losses"], rtol=1e-5)
