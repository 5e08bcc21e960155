"""The training input pipeline: clip shards -> Grain -> global `jax.Array` batches on the mesh.

Per source (a shard glob with a mixing weight and a kind, video or image):

    MapDataset.source(shards)[process_index::process_count]   # disjoint per host
      .shuffle(seed).repeat()                                  # new order every epoch
      .random_map(DecodeClip)                                  # decode, temporal crop, flip

then read with threads, bad records dropped (and counted), batched to the per-host batch and
mixed by weight (whole batches by default, or examples within batches), and prefetched by
worker processes. `DataPipeline` turns each host batch into global arrays sharded over the
mesh's batch axes (('data', 'fsdp') by default) with `jax.make_array_from_process_local_data`,
and scales video to [-1, 1] on device.

Batch dict: video float32 (B, T, H, W, 3) in [-1, 1]; is_image bool (B,); optional
video_hires, text_embeddings (B, L, D) bfloat16 (data.text_embeddings) or text_tokens (B, L) int32
(text.encode_in_step: each caption tokenized in the workers with config.text's vocabulary), and
text_mask (B, L) bool (all global arrays);
host-side: image_batch, True when every row is an image (with data.mix_by='batch', the
default, a batch comes from one source, so this is the same on every host and can pick the
model's image mode); caption and id, numpy string arrays of this host's rows (in the order of
its rows of the global batch); skipped, the number of unusable records this host dropped for
this batch.

Every random choice is a function of the seed and an element's position, so `get_state()` /
`set_state()` (or Orbax, via `grain.checkpoint.CheckpointSave(pipeline.iterator)`) resume
with exactly the batches an uninterrupted run would have produced. Restore with the same
process count, worker count and config.
"""
from __future__ import annotations

import dataclasses
import glob as globlib
import os
from typing import Any, Mapping, Optional, Sequence

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from lumiere_jax.data.schema import RecordError, parse_record
from lumiere_jax.data.shards import SHARD_SUFFIX
from lumiere_jax.data.transforms import (
    KINDS,
    CaptionTokens,
    ClipSpec,
    DecodeClip,
    DropSkipped,
    EmbeddingLookup,
    Skipped,
    TolerantSource,
    check_record,
    text_arrays,
)
from lumiere_jax.parallel.mesh import logical_axis_rules
from lumiere_jax.parallel.sharding import batch_shard_count, batch_sharding

SOURCE_KEYS = ("glob", "weight", "kind")
MIX_BY = ("batch", "example")
GLOBAL_KEYS = ("video", "video_hires", "is_image", "text_embeddings", "text_mask", "text_tokens")
_VIDEO_KEYS = ("video", "video_hires")
_MIX_WINDOW = 4096  # elements whose order is shuffled together after mixing sources
_PROBE_RECORDS = 8  # records read per source at start-up to check it against the config


@dataclasses.dataclass(frozen=True)
class Source:
    glob: str
    weight: float
    kind: str
    paths: tuple[str, ...]


_TEXT_HINT = (
    f"write GLOB[:WEIGHT[:KIND]],... (WEIGHT a positive number, 1.0 by default; KIND one of {KINDS}, video "
    "by default; a glob containing ':' needs both :WEIGHT:KIND), e.g. "
    "'data/clips/*.array_record,data/images/*.array_record:0.25:image'"
)
_LIST_EXAMPLE = "[{'glob': 'data/clips/*.array_record', 'weight': 1.0, 'kind': 'video'}]"


def _parse_sources_text(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Splits the string form of `data.sources`, 'GLOB[:WEIGHT[:KIND]],...', into (name for errors,
    {'glob', 'weight', 'kind'}) entries, which `resolve_sources` then checks like the list form's.

    Entries are split at ',' and each at its last two ':' at most: a glob that itself contains ':'
    (odd on the local file systems this reads) must be followed by both :WEIGHT:KIND, and one that
    contains ',' needs the list form.
    """
    if not text.strip():
        return []
    entries = []
    for i, entry in enumerate(part.strip() for part in text.split(",")):
        spec: dict[str, Any] = dict(zip(SOURCE_KEYS, entry.rsplit(":", 2)))
        if "weight" in spec:
            try:
                spec["weight"] = float(spec["weight"])
            except ValueError:
                pass  # left as written: the weight check names it
        entries.append((f"data.sources[{i}] {entry!r}", spec))
    return entries


def resolve_sources(specs: str | Sequence[Mapping[str, Any]]) -> list[Source]:
    """Checks `data.sources` and expands its globs; errors name the entry at fault and the form to write.

    Two forms: a list of {'glob', 'weight', 'kind'} dicts (config files) or one string
    'GLOB[:WEIGHT[:KIND]],...' (the command line). ml_collections overrides a field only with a value
    of the field's own type and has no parser for lists, so a list-typed field could not be set from
    the command line at all; lumiere_jax/config.py types the field `object` instead (the override is
    read as a Python literal, else kept as a string), which leaves every config file's list working,
    and the two forms are told apart here, at the one place that reads them.
    """
    if isinstance(specs, str):
        entries, hint = _parse_sources_text(specs), _TEXT_HINT
    elif isinstance(specs, Sequence):
        entries, hint = [(f"data.sources[{i}]", spec) for i, spec in enumerate(specs)], f"write e.g. {_LIST_EXAMPLE}"
    else:
        raise ValueError(f"data.sources must be a string or a list of dicts, got {specs!r}; {_TEXT_HINT}")
    if not entries:
        raise ValueError(f"data.sources is empty; {_TEXT_HINT}, or in a config file a list like {_LIST_EXAMPLE}")
    sources = []
    for where, spec in entries:
        if not hasattr(spec, "keys"):  # a list entry that is not a dict (ConfigDict is no Mapping)
            raise ValueError(f"{where} must be a dict, got {spec!r}; {hint}")
        spec = dict(spec)
        unknown = set(spec) - set(SOURCE_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; allowed: {SOURCE_KEYS}")
        pattern, weight, kind = spec.get("glob"), spec.get("weight", 1.0), spec.get("kind", "video")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{where}: glob must be a non-empty string matching shard files; {hint}")
        if not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise ValueError(f"{where}: weight must be a positive number, got {weight!r}; {hint}")
        if kind not in KINDS:
            raise ValueError(f"{where}: kind must be one of {KINDS}, got {kind!r}; {hint}")
        matched = sorted(globlib.glob(os.path.expanduser(pattern), recursive=True))
        paths = tuple(p for p in matched if p.endswith(SHARD_SUFFIX))
        if not paths:
            raise ValueError(
                f"{where}: glob {pattern!r} matches no shard files (*{SHARD_SUFFIX})"
                + (f"; it matched only {matched[:3]}" if matched else "")
                + ": check the path, or write shards with a data_pipelines job"
            )
        sources.append(Source(pattern, float(weight), kind, paths))
    return sources


def _open_source(source: Source, index: int, process_count: int) -> TolerantSource:
    data = TolerantSource(source.paths)
    if len(data) < process_count:
        raise ValueError(
            f"data.sources[{index}] ({source.glob!r}) has {len(data)} records, fewer than the "
            f"{process_count} processes that each need a share"
        )
    return data


def _probe(data: TolerantSource, spec: ClipSpec, source: Source, index: int) -> None:
    """Fails at start-up when a source's records cannot serve the config (too few frames, no
    frames at data.resolution, no text embeddings), instead of skipping every record later."""
    error = "no record could be read"
    lookup = EmbeddingLookup()
    for i in range(min(len(data), _PROBE_RECORDS)):
        element = data[i]
        if isinstance(element, Skipped):
            error = element.reason
            continue
        try:
            view = parse_record(element.data)
            check_record(view, spec)
            if spec.text_length is not None:
                text_arrays(view, element.shard, spec, lookup)
            return
        except RecordError as e:
            error = str(e)
    raise ValueError(f"data.sources[{index}] ({source.glob!r}) does not fit the data config: {error}")


def _clip_spec(config, kind: str, tokens: Optional[CaptionTokens]) -> ClipSpec:
    data_cfg = config.data
    return ClipSpec(
        num_frames=int(data_cfg.num_frames),
        resolution=int(data_cfg.resolution),
        kind=kind,
        random_flip=bool(data_cfg.random_flip),
        hires_resolution=int(data_cfg.hires_resolution),
        text_length=int(config.text.max_length) if data_cfg.text_embeddings else None,
        tokens=tokens,
    )


def caption_tokens(config) -> Optional[CaptionTokens]:
    """With text.encode_in_step, the captions' tokenizer (its vocabulary read here, so a missing or
    damaged file fails at start-up); the train step reads precomputed embeddings or encodes token
    ids itself, never both."""
    text = config.text
    if not text.encode_in_step:
        return None
    if config.data.text_embeddings:
        raise ValueError("text.encode_in_step=True encodes the captions in the train step, so the pipeline "
                         "tokenizes them instead of reading precomputed embeddings: set data.text_embeddings=False")
    tokens = CaptionTokens(text.vocabulary, int(text.max_length), int(text.extra_ids))
    tokens.tokenizer()
    return tokens


def per_host_batch_size(batch_size: int, process_count: int) -> int:
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"data.batch_size={batch_size} must be a positive multiple of the {process_count} processes")
    return batch_size // process_count


def _decoded_source(source: Source, index: int, config, tokens: Optional[CaptionTokens], process_index: int,
                    process_count: int) -> grain.MapDataset:
    """One source's records for this host: its share, shuffled anew each epoch, decoded."""
    spec = _clip_spec(config, source.kind, tokens)
    data = _open_source(source, index, process_count)
    _probe(data, spec, source, index)
    shuffle_seed, map_seed = (int(s) for s in np.random.SeedSequence([int(config.seed), index]).generate_state(2))
    ds = grain.MapDataset.source(data)[process_index::process_count]
    return ds.shuffle(seed=shuffle_seed).repeat().random_map(DecodeClip(spec), seed=map_seed)


def host_dataset(config, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The Grain dataset of this host's batches (numpy, uint8 video), from `config.data`,
    `config.seed` and, for text embeddings, `config.text.max_length` tokens per caption.

    `data.mix_by='batch'` mixes the sources batch by batch (every batch from one source, so an
    image batch can run the model in image mode); 'example' mixes them inside every batch.
    """
    data_cfg = config.data
    if data_cfg.mix_by not in MIX_BY:
        raise ValueError(f"data.mix_by must be one of {MIX_BY}, got {data_cfg.mix_by!r}")
    tokens = caption_tokens(config)
    sources = resolve_sources(data_cfg.sources)
    datasets = [_decoded_source(s, i, config, tokens, process_index, process_count) for i, s in enumerate(sources)]
    weights = [s.weight for s in sources]
    read = grain.ReadOptions(
        num_threads=int(data_cfg.read_threads), prefetch_buffer_size=int(data_cfg.read_buffer_size)
    )
    per_host = per_host_batch_size(int(data_cfg.batch_size), process_count)

    def batched(ds: grain.MapDataset) -> grain.IterDataset:
        kept = DropSkipped(ds.to_iter_dataset(read), int(data_cfg.max_consecutive_corrupt))
        return kept.batch(per_host, drop_remainder=True)

    if data_cfg.mix_by == "batch":
        mixed = grain.IterDataset.mix([batched(ds) for ds in datasets], weights)
    else:
        examples = grain.MapDataset.mix(datasets, weights)
        if len(datasets) > 1:
            # Mixing interleaves the sources in a fixed periodic pattern; worker i of W takes
            # every W-th element, which would alias with that period (one worker all video,
            # another half images). Shuffling within windows keeps proportions and elements.
            examples = grain.experimental.WindowShuffleMapDataset(
                examples, window_size=_MIX_WINDOW, seed=int(config.seed)
            )
        mixed = batched(examples)
    workers = grain.MultiprocessingOptions(
        num_workers=int(data_cfg.num_workers), per_worker_buffer_size=int(data_cfg.worker_buffer_size)
    )
    return mixed.mp_prefetch(workers)


@jax.jit
def _to_unit_range(video: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1], where the array lives (sharding is kept). The clip
    keeps the ends exact when XLA turns the division into a multiply by a rounded reciprocal."""
    return jnp.clip(video.astype(jnp.float32) / 127.5 - 1.0, -1.0, 1.0)


class DataPipeline:
    """Global training batches from `config.data` on `mesh` (see the module docstring)."""

    def __init__(
        self,
        config,
        mesh: Mesh,
        rules,
        process_index: Optional[int] = None,
        process_count: Optional[int] = None,
    ):
        self._process_count = jax.process_count() if process_count is None else process_count
        process_index = jax.process_index() if process_index is None else process_index
        data_cfg = config.data
        self.batch_size = int(data_cfg.batch_size)
        self._mesh, self._rules = mesh, rules
        shards = batch_shard_count(mesh, rules)
        if self.batch_size % shards:
            raise ValueError(
                f"data.batch_size={self.batch_size} must be a multiple of {shards}, the number of batch "
                f"shards of mesh {dict(mesh.shape)} (mesh axes the 'batch' rule maps to)"
            )
        self._dataset = host_dataset(config, process_index, self._process_count)
        self.iterator = iter(self._dataset)
        self.num_skipped = 0  # unusable records dropped by this host since this object was made

    def __iter__(self) -> "DataPipeline":
        return self

    def __next__(self) -> dict[str, Any]:
        local = next(self.iterator)
        batch: dict[str, Any] = {k: self._global(local[k]) for k in GLOBAL_KEYS if k in local}
        for key in _VIDEO_KEYS:
            if key in batch:
                batch[key] = _to_unit_range(batch[key])
        batch["image_batch"] = bool(local["is_image"].all())  # the same on every host with mix_by='batch'
        # Copies for the same reason as in _global: a view would keep the worker's block alive.
        batch["caption"] = np.array(local["caption"])
        batch["id"] = np.array(local["id"])
        batch["skipped"] = int(local["skipped"].sum())
        self.num_skipped += batch["skipped"]
        return batch

    def _global(self, local: np.ndarray) -> jax.Array:
        sharding: NamedSharding = batch_sharding(self._mesh, self._rules, local.ndim)
        # np.array copies: on the CPU jax would alias the worker's shared-memory block, which then
        # outlives Grain's clean-up and is reported as leaked shared memory at exit.
        return jax.make_array_from_process_local_data(sharding, np.array(local), (self.batch_size, *local.shape[1:]))

    def get_state(self) -> dict[str, Any]:
        """This host's position in the data (JSON-serialisable), for checkpoints."""
        return self.iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self.iterator.set_state(state)

    def close(self) -> None:
        """Stops the worker processes (also done at garbage collection, at no set time)."""
        self.iterator.close()

    def __enter__(self) -> "DataPipeline":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def make_pipeline(config, mesh: Mesh) -> DataPipeline:
    """`DataPipeline` with the mesh rules of `config.mesh.rules`."""
    return DataPipeline(config, mesh, logical_axis_rules(config.mesh.rules))
