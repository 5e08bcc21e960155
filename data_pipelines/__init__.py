"""Offline jobs that write clip/caption shards (they use lumiere_jax.data's schema)."""
