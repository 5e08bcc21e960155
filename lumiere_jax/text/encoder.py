"""From `config.text` to a loaded, sharded T5 encoder, its tokenizer and a batched encode function."""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.t5 import T5Config, T5Encoder, t5_config
from lumiere_jax.parallel import batch_shard_count, batch_sharding, create_sharded, logical_axis_rules
from lumiere_jax.text.hf_checkpoint import load_hf_encoder
from lumiere_jax.text.t5x_checkpoint import load_t5x_encoder
from lumiere_jax.text.tokenizer import T5Tokenizer

def seeded_encoder(seed: int, config: T5Config, mesh: Optional[Mesh] = None, rules=None) -> T5Encoder:
    """A frozen encoder initialised from `seed` (checkpoint_format 'seed').

    For domains where no pretrained T5 is available (the CPU demo): random features of a fixed,
    reproducible network still tell tokens and their order apart, and the seed in the config is
    all a checkpoint needs to ship.
    """
    return create_sharded(lambda key: T5Encoder(config, rngs=Rngs(key)), int(seed), mesh, rules)


LOADERS = {"hf": load_hf_encoder, "t5x": load_t5x_encoder}
FORMATS = (*LOADERS, "seed")


def encoder_config(text: ml_collections.ConfigDict) -> T5Config:
    """The T5Config named by `config.text` (encoder preset, variant, dtypes)."""
    return t5_config(text.encoder, text.variant, dtype=text.dtype, param_dtype=text.param_dtype)


def check_encoder_width(text: ml_collections.ConfigDict, text_dim: int) -> None:
    """The encoder's output width must be what the diffusion model reads (model.text_dim)."""
    width = encoder_config(text).d_model
    if width != text_dim:
        raise ValueError(f"text.encoder={text.encoder!r} outputs {width}-wide embeddings but model.text_dim="
                         f"{text_dim}: set model.text_dim={width} or pick the encoder the model was built for")


def load_text_encoder(text: ml_collections.ConfigDict, mesh: Optional[Mesh] = None, rules=None) -> T5Encoder:
    """Reads the checkpoint of `config.text` into a T5Encoder, sharded over `mesh` when given."""
    if text.checkpoint_format not in FORMATS:
        raise ValueError(f"config.text.checkpoint_format={text.checkpoint_format!r}; use one of {FORMATS}")
    if text.checkpoint_format == "seed":
        return seeded_encoder(text.init_seed, encoder_config(text), mesh, rules)
    if not text.checkpoint:
        raise ValueError("config.text.checkpoint is empty: give the HF safetensors or t5x checkpoint of the encoder")
    return LOADERS[text.checkpoint_format](text.checkpoint, encoder_config(text), mesh, rules)


def load_tokenizer(text: ml_collections.ConfigDict, encoder_vocab_size: int) -> T5Tokenizer:
    """The tokenizer of `config.text`, checked against the encoder's embedding table.

    An id beyond the table would be clamped silently by the embedding gather, so a vocabulary
    larger than the encoder's is refused here.
    """
    if not text.vocabulary:
        raise ValueError("config.text.vocabulary is empty: give the encoder's sentencepiece model file")
    tokenizer = T5Tokenizer(text.vocabulary, text.max_length, extra_ids=text.extra_ids)
    if tokenizer.vocab_size > encoder_vocab_size:
        raise ValueError(
            f"vocabulary {text.vocabulary} has {tokenizer.vocab_size} ids but the encoder embeds only "
            f"{encoder_vocab_size}; the vocabulary does not belong to this encoder (check variant and extra_ids)"
        )
    return tokenizer


def make_encode_fn(
    encoder: T5Encoder, mesh: Mesh, rules, out_dtype=jnp.bfloat16
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`encode(tokens [B, L], mask [B, L]) -> embeddings [B, L, D]`, batch split over the mesh.

    The encoder state is an argument of the jitted function (not a closure constant), so the
    compiled program stays small and the weights stay where the loader sharded them. Any B works:
    rows are padded to a multiple of the mesh's batch shards and the padding dropped again (callers
    that want one compiled shape pass fixed-size batches).
    """
    graphdef, state = nnx.split(encoder)
    rules = logical_axis_rules(rules)
    in_sharding = batch_sharding(mesh, rules, 2)
    shards = batch_shard_count(mesh, rules)

    @functools.partial(jax.jit, out_shardings=batch_sharding(mesh, rules, 3))
    def run(state, tokens, mask):
        return nnx.merge(graphdef, state)(tokens, mask).astype(out_dtype)

    def encode(tokens, mask):
        rows = len(tokens)
        pad = ((0, -rows % shards), (0, 0))
        put = lambda a: jax.device_put(np.pad(np.asarray(a), pad), in_sharding)  # noqa: E731
        out = run(state, put(tokens), put(mask))
        return out if pad[0][1] == 0 else out[:rows]

    return encode
