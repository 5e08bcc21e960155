"""What the train step calls for its text condition: precomputed embeddings, or the encoder in-step.

`config.text.encode_in_step` picks the source:

- False (default): the batch carries `text_embeddings` [B, L, D] (bfloat16, written by
  `data_pipelines.encode_captions`) and `text_mask` [B, L]; the encoder is not in the step.
- True: the batch carries `text_tokens` [B, L] int32 (and optionally `text_mask`; otherwise
  it is `text_tokens != 0`) and the frozen encoder runs inside the step, under
  `stop_gradient`.

Both return bfloat16 embeddings and a bool mask, so the diffusion model sees the same thing
whichever way the embeddings were made.
"""
from __future__ import annotations

from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from lumiere_jax.models.t5 import T5Encoder

EMBEDDINGS, MASK, TOKENS = "text_embeddings", "text_mask", "text_tokens"


def _field(batch: Mapping, name: str, mode: str) -> jax.Array:
    if name not in batch:
        raise KeyError(f"batch has no {name!r} field, which {mode} needs; batch fields: {sorted(batch)}")
    return batch[name]


def text_conditioning(
    batch: Mapping[str, jax.Array], text: ml_collections.ConfigDict, encoder: Optional[T5Encoder] = None
) -> tuple[jax.Array, jax.Array]:
    """(embeddings bfloat16 [B, L, D], mask bool [B, L]) for `batch`, per `config.text`."""
    if text.encode_in_step:
        mode = "config.text.encode_in_step=True"
        if encoder is None:
            raise ValueError(
                f"{mode} but no encoder was given; build one with lumiere_jax.text.encoder.load_text_encoder"
            )
        tokens = _field(batch, TOKENS, mode)
        mask = batch[MASK] if MASK in batch else tokens != 0
        embeddings = jax.lax.stop_gradient(encoder(tokens, mask))
    else:
        mode = "config.text.encode_in_step=False (precomputed embeddings)"
        embeddings, mask = _field(batch, EMBEDDINGS, mode), _field(batch, MASK, mode)
    if embeddings.ndim != 3 or mask.shape != embeddings.shape[:2]:
        raise ValueError(f"text embeddings {embeddings.shape} and mask {mask.shape} must be [B, L, D] and [B, L]")
    return embeddings.astype(jnp.bfloat16), mask.astype(bool)
