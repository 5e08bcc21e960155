"""Clip/caption data: the record schema, shard files and the Grain input pipeline.

Modules (imported explicitly, so the offline jobs that only write shards never pay for the
pipeline's imports):
  schema     the versioned record format (`ClipRecord`, `encode_record`, `parse_record`)
  shards     ArrayRecord shard writing/reading with write-then-rename completion
  transforms per-record decode, temporal crop and flip run inside Grain workers
  pipeline   sources from config, Grain dataset, global `jax.Array` batches, iterator state
"""
