"""On-disk format of precomputed caption embeddings (written by data_pipelines.encode_captions).

One directory per caption shard, `<shard stem>.t5/`, holding plain `.npy` files so that any
numpy can memory-map them and a training pipeline can read single rows without loading a shard:

    embeddings.npy  uint16 [N, L, D]  the bfloat16 bit patterns of the encoder output (numpy has no
                                      bfloat16; `read_embedding_shard` views them as ml_dtypes.bfloat16)
    mask.npy        bool   [N, L]     True at real tokens (including EOS)
    tokens.npy      int32  [N, L]     the token ids that were encoded (0 = padding)
    ids.json        list of N caption ids, in row order (rows with a bad caption are absent)
    meta.json       {"format", "version", "count", "max_length", "dim", "dtype": "bfloat16",
                     "encoder", "variant", "checkpoint", "source"}

A shard is written into `<stem>.t5.partial/` and renamed when complete, so a directory named
`<stem>.t5` is always whole; an interrupted job leaves only a `.partial` that the next run
replaces.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any, Sequence

import ml_dtypes
import numpy as np

FORMAT = "lumiere_t5_embeddings"
VERSION = 1
SUFFIX = ".t5"
PARTIAL = ".partial"


@dataclasses.dataclass(frozen=True)
class EmbeddingShard:
    """A shard as memory maps: `embeddings` bfloat16 [N, L, D], `mask` bool, `tokens` int32."""

    ids: list
    embeddings: np.ndarray
    mask: np.ndarray
    tokens: np.ndarray
    meta: dict


def shard_directory(output_dir: str, source: str) -> str:
    """Where the embeddings of caption shard `source` go: `<output_dir>/<stem>.t5`."""
    stem = os.path.splitext(os.path.basename(source))[0]
    return os.path.join(output_dir, stem + SUFFIX)


class EmbeddingShardWriter:
    """Fills one shard's arrays batch by batch (memory maps: host memory stays one batch)."""

    def __init__(self, directory: str, count: int, max_length: int, dim: int, meta: dict[str, Any]):
        self.directory, self.partial = directory, directory + PARTIAL
        shutil.rmtree(self.partial, ignore_errors=True)
        os.makedirs(self.partial)
        self.meta = dict(meta, format=FORMAT, version=VERSION, count=count, max_length=max_length, dim=dim,
                         dtype="bfloat16")
        self.embeddings = self._array("embeddings", np.uint16, (count, max_length, dim))
        self.mask = self._array("mask", np.bool_, (count, max_length))
        self.tokens = self._array("tokens", np.int32, (count, max_length))

    def _array(self, name: str, dtype, shape) -> np.ndarray:
        path = os.path.join(self.partial, name + ".npy")
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

    def write(self, start: int, embeddings: np.ndarray, mask: np.ndarray, tokens: np.ndarray) -> None:
        """Rows [start, start + len(embeddings)); `embeddings` must be bfloat16."""
        if embeddings.dtype != ml_dtypes.bfloat16:
            raise TypeError(f"embeddings must be bfloat16, got {embeddings.dtype}")
        stop = start + len(embeddings)
        self.embeddings[start:stop] = embeddings.view(np.uint16)
        self.mask[start:stop] = mask
        self.tokens[start:stop] = tokens

    def close(self, ids: Sequence) -> None:
        """Writes ids and metadata, flushes, and publishes the shard under its final name."""
        if len(ids) != self.meta["count"]:
            raise ValueError(f"{len(ids)} ids for a shard of {self.meta['count']} rows")
        for array in (self.embeddings, self.mask, self.tokens):
            array.flush()
        with open(os.path.join(self.partial, "ids.json"), "w") as f:
            json.dump(list(ids), f)
        with open(os.path.join(self.partial, "meta.json"), "w") as f:
            json.dump(self.meta, f, indent=1)
        shutil.rmtree(self.directory, ignore_errors=True)
        os.rename(self.partial, self.directory)


def read_embedding_shard(directory: str) -> EmbeddingShard:
    """Memory-maps a shard written by `EmbeddingShardWriter`, checking that its parts agree."""
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path):
        raise FileNotFoundError(
            f"{directory} is not a complete embedding shard (no meta.json); run data_pipelines.encode_captions"
        )
    with open(meta_path) as f:
        meta = json.load(f)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{directory}: format {meta.get('format')!r} v{meta.get('version')}, expected {FORMAT} v{VERSION}"
        )
    with open(os.path.join(directory, "ids.json")) as f:
        ids = json.load(f)
    load = lambda name: np.load(os.path.join(directory, name + ".npy"), mmap_mode="r")  # noqa: E731
    embeddings, mask, tokens = load("embeddings").view(ml_dtypes.bfloat16), load("mask"), load("tokens")
    n, length, dim = meta["count"], meta["max_length"], meta["dim"]
    shapes_agree = embeddings.shape == (n, length, dim) and mask.shape == tokens.shape == (n, length)
    if not shapes_agree or len(ids) != n:
        raise ValueError(
            f"{directory}: parts disagree with meta.json ({n} x {length} x {dim}): embeddings {embeddings.shape}, "
            f"mask {mask.shape}, tokens {tokens.shape}, {len(ids)} ids"
        )
    return EmbeddingShard(ids=ids, embeddings=embeddings, mask=mask, tokens=tokens, meta=meta)
