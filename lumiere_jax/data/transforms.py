"""Per-record work of the input pipeline: read, decode, crop, flip; and dropping bad records.

Everything here runs inside Grain (in worker processes when `num_workers > 0`, which are
spawned and unpickle these objects), so it lives at module level and holds only plain config.
Outputs stay uint8: scaling to [-1, 1] happens on the accelerator, which moves a quarter of
the bytes through shared memory and host-to-device copies.
"""
from __future__ import annotations

import bisect
import dataclasses
import os
from typing import Any, NamedTuple, Optional, Sequence

import grain
import numpy as np
from absl import logging
from grain.sources import ArrayRecordDataSource

from lumiere_jax.data.schema import RecordError, RecordView, parse_record
from lumiere_jax.data.shards import captions_path, open_reader
from lumiere_jax.text.embedding_store import read_embedding_shard, shard_directory

KINDS = ("video", "image")


@dataclasses.dataclass(frozen=True)
class Skipped:
    """What the pipeline carries instead of a record it could not use; counted, then dropped."""

    reason: str


class SourceRecord(NamedTuple):
    shard: str  # path of the shard the record came from (where its embedding store is)
    data: bytes


class TolerantSource:
    """The records of several ArrayRecord shards, each with the shard it came from; an entry
    that cannot be read (e.g. a chunk failing its checksum) comes back as `Skipped` instead of
    raising, so one damaged record does not stop training."""

    def __init__(self, paths: Sequence[str]):
        self._paths = list(paths)
        counts = []
        for path in self._paths:
            reader = open_reader(path)
            counts.append(reader.num_records())
            reader.close()
        self._ends = np.cumsum(counts).tolist()
        self._source = ArrayRecordDataSource(self._paths)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> SourceRecord | Skipped:
        shard = self._paths[bisect.bisect_right(self._ends, index)]
        try:
            return SourceRecord(shard, self._source[index])
        except RuntimeError as e:  # array_record's error for a damaged file region
            return Skipped(f"unreadable entry {index} ({shard}): {e}")

    def __repr__(self) -> str:
        return f"TolerantSource({len(self._paths)} shards)"


class EmbeddingLookup:
    """Finds a record's precomputed text embeddings when the record does not carry them: in the
    store `<stem>.t5/` next to its shard (written by `data_pipelines.encode_captions` from the
    shard's `<stem>.jsonl`), by record id. Stores are memory-mapped on first use, per process."""

    def __init__(self):
        self._stores: dict[str, Optional[tuple[Any, dict[str, int]]]] = {}

    def __getstate__(self) -> dict:
        return {}  # open memory maps stay in the process that opened them

    def __setstate__(self, state: dict) -> None:
        self._stores = {}

    def _store(self, shard: str) -> Optional[tuple[Any, dict[str, int]]]:
        if shard not in self._stores:
            directory = shard_directory(os.path.dirname(shard), shard)
            store = None
            if os.path.isdir(directory):
                embeddings = read_embedding_shard(directory)
                store = (embeddings, {str(i): row for row, i in enumerate(embeddings.ids)})
            self._stores[shard] = store
        return self._stores[shard]

    def __call__(self, view: RecordView, shard: str) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (L, D) bfloat16, mask (L,) bool), from the record or its shard's store."""
        if "text_embeddings" in view.array_names:
            return view.array("text_embeddings"), view.array("text_mask")
        store = self._store(shard)
        row = None if store is None else store[1].get(view.id)
        if row is None:
            raise RecordError(
                f"record {view.id!r} has no text embeddings, in the record or in "
                f"{shard_directory(os.path.dirname(shard), shard)}; run data_pipelines.encode_captions on "
                f"{captions_path(shard)} or set data.text_embeddings=False"
            )
        return np.asarray(store[0].embeddings[row]), np.asarray(store[0].mask[row])


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """What the pipeline makes of every record (from `config.data`)."""

    num_frames: int
    resolution: int
    kind: str = "video"  # video: a num_frames window; image: one frame repeated num_frames times
    random_flip: bool = False
    hires_resolution: int = 0  # > 0: also the same frames from the record's hires copy
    text_length: Optional[int] = None  # set: every example carries (text_length, D) text embeddings
    tokens: Optional["CaptionTokens"] = None  # set: every example carries its caption's T5 token ids


class CaptionTokens:
    """A caption -> its T5 token ids (L,) int32 and mask (L,) bool, for encoding inside the train step.

    Built from `config.text` (vocabulary, max_length, extra_ids); the sentencepiece processor is
    made on first use in each process, since Grain's workers unpickle this object and a processor
    does not pickle. A caption's ids depend on nothing else, so resumed runs see the same ones.
    """

    def __init__(self, vocabulary: str, max_length: int, extra_ids: int):
        self.vocabulary, self.max_length, self.extra_ids = vocabulary, max_length, extra_ids
        self._tokenizer = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_tokenizer"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _tokenizer=None)

    def tokenizer(self):
        if self._tokenizer is None:
            from lumiere_jax.text.tokenizer import T5Tokenizer

            self._tokenizer = T5Tokenizer(self.vocabulary, self.max_length, self.extra_ids)
        return self._tokenizer

    def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer()([caption])
        return batch.tokens[0], batch.mask[0]


def check_record(view: RecordView, spec: ClipSpec) -> None:
    """Raises RecordError when a well-formed record's frames cannot give what `spec` asks for."""
    where = f"record {view.id!r}"
    if spec.kind == "video" and view.num_frames < spec.num_frames:
        raise RecordError(f"{where} has {view.num_frames} frames, fewer than data.num_frames={spec.num_frames}")
    for size in filter(None, (spec.resolution, spec.hires_resolution)):
        if size not in view.sizes:
            raise RecordError(
                f"{where} has frames of heights {view.sizes}, not {size} (data.resolution / hires_resolution)"
            )
        width = view.frames_shape(size)[2]
        if width != size:
            raise RecordError(f"{where}: its frames of height {size} are {width} wide; the pipeline needs squares")


def text_arrays(view: RecordView, shard: str, spec: ClipSpec, lookup: EmbeddingLookup) -> tuple[np.ndarray, np.ndarray]:
    """The record's text embeddings and mask, checked against `spec.text_length`."""
    embeddings, mask = lookup(view, shard)
    if embeddings.ndim != 2 or embeddings.shape[0] != spec.text_length or mask.shape != embeddings.shape[:1]:
        raise RecordError(
            f"record {view.id!r} has text embeddings {embeddings.shape} / mask {mask.shape}; the config "
            f"needs ({spec.text_length}, D) / ({spec.text_length},) (text.max_length)"
        )
    return embeddings, mask.astype(bool)


class DecodeClip(grain.transforms.RandomMap):
    """Record bytes -> example dict; a record that cannot be used becomes `Skipped`.

    The window start (video) or frame (image) and the flip are drawn from Grain's per-element
    generator, so they are a function of the seed and the element's position: resuming from an
    iterator state reproduces them exactly.
    """

    def __init__(self, spec: ClipSpec):
        self.spec = spec
        self.lookup = EmbeddingLookup()

    def random_map(self, element: SourceRecord | Skipped, rng: np.random.Generator) -> dict[str, Any] | Skipped:
        if isinstance(element, Skipped):
            return element
        try:
            view = parse_record(element.data)
            check_record(view, self.spec)
            example = self._example(view, rng)
            if self.spec.text_length is not None:
                text = text_arrays(view, element.shard, self.spec, self.lookup)
                example["text_embeddings"], example["text_mask"] = text
            if self.spec.tokens is not None:
                example["text_tokens"], example["text_mask"] = self.spec.tokens(view.caption)
            return example
        except RecordError as e:
            return Skipped(f"{e} (in {element.shard})")

    def _example(self, view: RecordView, rng: np.random.Generator) -> dict[str, Any]:
        spec = self.spec
        length = spec.num_frames if spec.kind == "video" else 1
        start = int(rng.integers(0, view.num_frames - length + 1))
        flip = spec.random_flip and bool(rng.random() < 0.5)

        def frames(size: int) -> np.ndarray:
            clip = view.frames(start, start + length, size=size)
            clip = clip[:, :, ::-1] if flip else clip
            return np.broadcast_to(clip, (spec.num_frames, *clip.shape[1:])) if length == 1 else clip

        example = {
            "video": frames(spec.resolution),
            "is_image": np.bool_(spec.kind == "image"),
            "caption": view.caption,
            "id": view.id,
        }
        if spec.hires_resolution:
            example["video_hires"] = frames(spec.hires_resolution)
        return example


class DropSkipped(grain.IterDataset):
    """Drops `Skipped` elements and stamps each kept example with how many were dropped just
    before it ('skipped'), so the per-batch sum reaches the training metrics even when the
    dropping happens in a worker process."""

    def __init__(self, parent: grain.IterDataset, max_consecutive: int):
        super().__init__(parent)
        self._max_consecutive = max_consecutive

    def __iter__(self) -> grain.DatasetIterator:
        return _DropSkippedIterator(self._parent.__iter__(), self._max_consecutive)


class _DropSkippedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, max_consecutive: int):
        super().__init__(parent)
        self._max_consecutive = max_consecutive

    def __next__(self) -> dict[str, Any]:
        skipped = 0
        while True:
            element = next(self._parent)
            if not isinstance(element, Skipped):
                return {**element, "skipped": np.int32(skipped)}
            logging.warning("skipping a record: %s", element.reason)
            skipped += 1
            if skipped >= self._max_consecutive:
                raise RuntimeError(
                    f"{skipped} records in a row could not be used (last: {element.reason}); the shards or "
                    "data config are wrong (see the warnings above), or raise data.max_consecutive_corrupt"
                )

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()  # stateless beyond the parent: nothing is held between calls

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(state)
