"""How prompts become the U-Net's text condition: ours, or DeepFloyd IF's (`config.text.conventions`).

- `lumiere` (ours): prompts as written; the U-Net masks the padding tokens out; the null prompt
  of classifier-free guidance and of the train-time text dropout is "no tokens" (zero embeddings,
  empty mask: `diffusion.null_text_conditioning`).
- `deepfloyd_if`: what the IF pipeline does, so a converted IF model sees the text it was trained
  on: prompts lower-cased and stripped, T5 over `max_length` = 77 tokens (T5 itself still masks its
  padding), the U-Net attends to all 77 token embeddings (mask all ones), and the null prompt is
  T5 of the empty string, padded the same way.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lumiere_jax.diffusion.guidance import null_text_conditioning

CONVENTIONS = ("lumiere", "deepfloyd_if")
IF_MAX_LENGTH = 77


def conventions(text: ml_collections.ConfigDict) -> str:
    """The validated `config.text.conventions` (configs written before it existed: lumiere)."""
    name = text.get("conventions", "lumiere")
    if name not in CONVENTIONS:
        raise ValueError(f"config.text.conventions={name!r} is not one of {CONVENTIONS}")
    if name == "deepfloyd_if" and text.max_length != IF_MAX_LENGTH:
        raise ValueError(f"config.text.conventions='deepfloyd_if' encodes {IF_MAX_LENGTH} tokens, as IF was trained; "
                         f"config.text.max_length is {text.max_length}")
    return name


def encodes_null_prompt(text: ml_collections.ConfigDict) -> bool:
    """True when the null prompt is T5("") rather than no tokens."""
    return conventions(text) == "deepfloyd_if"


def prepare_prompts(prompts: Sequence[str], text: ml_collections.ConfigDict) -> list[str]:
    """The prompts as the tokenizer should see them (IF: lower-cased and stripped)."""
    if conventions(text) == "deepfloyd_if":
        return [p.lower().strip() for p in prompts]
    return list(prompts)


def unet_mask(mask, text: ml_collections.ConfigDict):
    """The mask the U-Net reads for encoded tokens (IF: every position, padding included)."""
    if conventions(text) == "deepfloyd_if":
        return jnp.ones_like(mask) if isinstance(mask, jax.Array) else np.ones_like(mask)
    return mask


def null_conditioning(cond: dict, null_text: Optional[jax.Array]) -> dict:
    """{"text", "mask"} of the null prompt shaped like `cond`'s: no tokens (`null_text` None), or the
    encoded empty prompt (L, D) on every row with every position attended."""
    if null_text is None:
        return null_text_conditioning({"text": cond["text"], "mask": cond["mask"]})
    return {"text": jnp.broadcast_to(jnp.asarray(null_text, cond["text"].dtype), cond["text"].shape),
            "mask": jnp.ones_like(cond["mask"])}


def encode_null_prompt(text: ml_collections.ConfigDict, mesh, rules, encoder=None) -> np.ndarray:
    """T5("") as (max_length, D) float32, with `encoder` or the one `config.text` names."""
    from lumiere_jax.text.encoder import load_text_encoder, load_tokenizer, make_encode_fn

    if encoder is None:
        encoder = load_text_encoder(text, mesh, rules)
    tokens = load_tokenizer(text, encoder.config.vocab_size)([""])
    return np.asarray(make_encode_fn(encoder, mesh, rules)(tokens.tokens, tokens.mask), np.float32)[0]
