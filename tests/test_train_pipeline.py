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
