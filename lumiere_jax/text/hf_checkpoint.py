"""Hugging Face T5EncoderModel / UMT5EncoderModel (or full seq2seq) safetensors -> our encoder.

The safetensors format is read here directly (an 8-byte little-endian header length, a JSON
header of {name: dtype, shape, byte range}, then raw little-endian data) through a memory map:
the `safetensors` package is not a runtime dependency, bfloat16 tensors read without torch, and
a sharded load touches only the bytes of each device's slice.

Name map (HF -> ours; torch Linear weights are [out, in], ours are [in, out]):

    shared.weight (tied: encoder.embed_tokens / decoder.embed_tokens)  -> embedding         id
    encoder.block.i.layer.0.layer_norm.weight                          -> layers.i.pre_attention_norm.scale
    encoder.block.i.layer.0.SelfAttention.{q,k,v}.weight [h*dk, d]     -> layers.i.attention.{query,key,value}
                                                                          .T, split to [d, h, dk]
    encoder.block.i.layer.0.SelfAttention.o.weight [d, h*dk]           -> layers.i.attention.out  .T, [h, dk, d]
    encoder.block.0...relative_attention_bias.weight [32, h]           -> relpos.rel_embedding    .T (T5.1.1)
    encoder.block.i...relative_attention_bias.weight [32, h]           -> layers.i.relpos...      .T (UMT5)
    encoder.block.i.layer.1.layer_norm.weight                          -> layers.i.pre_mlp_norm.scale
    encoder.block.i.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight       -> layers.i.mlp.{wi_0,wi_1,wo}  .T
    encoder.final_layer_norm.weight                                    -> final_norm.scale

Decoder tensors and `lm_head` of a seq2seq checkpoint are skipped; any other tensor the encoder
does not consume is an error (e.g. per-layer bias tables loaded as t5_1_1: they mean UMT5).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Optional

import ml_dtypes
import numpy as np
from jax.sharding import Mesh

from lumiere_jax.models.t5 import T5Config, T5Encoder
from lumiere_jax.text.checkpoint import (
    CheckpointError,
    InMemory,
    LazyArray,
    SplitAxis,
    Transposed,
    check_unexpected,
    load_encoder,
    mapped,
)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Tied copies of the token embedding, in order of preference; `safetensors.torch.save_model`
# keeps one of them and records the others as aliases in the header metadata.
EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
SKIPPED_PREFIXES = ("decoder.", "lm_head.")
DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}


def read_safetensors_file(path: str) -> dict[str, LazyArray]:
    """Every tensor of one .safetensors file as a memory-mapped view, after validating the header.

    A truncated or corrupt file fails here, naming the file and the first tensor that does not
    fit, rather than as a bus error or garbage values later.
    """
    size = os.path.getsize(path)
    advice = "the file is truncated or corrupt; copy or save it again"
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{path}: {size} bytes is too short for a safetensors header; {advice}")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: header claims {header_len} bytes but the file has {size}; {advice}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({err}); {advice}") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    data_len = size - data_start
    memmap = np.memmap(path, dtype=np.uint8, mode="r") if data_len else np.zeros(0, np.uint8)
    tensors = {}
    for name, info in header.items():
        if info.get("dtype") not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        dtype, shape = DTYPES[info["dtype"]], tuple(info["shape"])
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_len or end - begin != int(np.prod(shape)) * dtype.itemsize:
            raise CheckpointError(
                f"{path}: tensor {name!r} ({info['dtype']} {list(shape)}) needs bytes [{begin}, {end}) of the data "
                f"section, which holds {data_len}; {advice}"
            )
        raw = memmap[data_start + begin : data_start + end]
        tensors[name] = InMemory(raw.view(dtype).reshape(shape))
    return tensors


def _inside(directory: str, name: str) -> str:
    """`directory/name`, refusing names that resolve outside `directory`."""
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, path]) != root:
        raise CheckpointError(f"{directory}: shard file {name!r} resolves outside the checkpoint directory")
    return path


def read_safetensors(path: str, single: str = SINGLE_FILE, index_name: str = INDEX_FILE,
                     what: str = "Hugging Face checkpoint (config.text.checkpoint)") -> dict[str, LazyArray]:
    """Tensors of a .safetensors file, or of a directory holding `single` or a sharded checkpoint
    (`index_name` + its shard files). transformers names them model.safetensors[.index.json];
    diffusers, diffusion_pytorch_model.safetensors[.index.json]."""
    if not os.path.exists(path):
        raise CheckpointError(f"{what} {path} does not exist")
    if not os.path.isdir(path):
        return read_safetensors_file(path)
    index = os.path.join(path, index_name)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no 'weight_map' object")
        files = {}
        for shard in sorted(set(weight_map.values())):
            files.update(read_safetensors_file(_inside(path, shard)))
        return files
    single_path = os.path.join(path, single)
    if os.path.exists(single_path):
        return read_safetensors_file(single_path)
    raise CheckpointError(f"{path} holds neither {single} nor {index_name}")


def hf_sources(tensors: dict[str, LazyArray], config: T5Config, where: str) -> dict:
    """Maps our parameter paths to the HF tensors (see the module docstring for the table)."""
    used: set[str] = set()

    def take(path: str, name: str, *ops):
        if name not in tensors:
            raise CheckpointError(f"{where} lacks tensor {name!r} for parameter {path}")
        used.add(name)
        return mapped(path, name, tensors[name], *ops)

    h, k = config.num_heads, config.head_dim
    transpose = lambda a: Transposed(a, (1, 0))  # noqa: E731
    split_in = lambda a: SplitAxis(a, 1, (h, k))  # noqa: E731  [d, h*dk] -> [d, h, dk]
    split_out = lambda a: SplitAxis(a, 0, (h, k))  # noqa: E731  [h*dk, d] -> [h, dk, d]
    embedding = next((n for n in EMBEDDING_NAMES if n in tensors), EMBEDDING_NAMES[0])
    sources = {
        "embedding": take("embedding", embedding),
        "final_norm.scale": take("final_norm.scale", "encoder.final_layer_norm.weight"),
    }
    used.update(n for n in EMBEDDING_NAMES if n in tensors)
    bias = "encoder.block.{}.layer.0.SelfAttention.relative_attention_bias.weight"
    if not config.per_layer_relpos:
        sources["relpos.rel_embedding"] = take("relpos.rel_embedding", bias.format(0), transpose)
    for i in range(config.num_layers):
        ours, attn = f"layers.{i}.", f"encoder.block.{i}.layer.0."
        mlp = f"encoder.block.{i}.layer.1."
        if config.per_layer_relpos:
            sources[ours + "relpos.rel_embedding"] = take(ours + "relpos.rel_embedding", bias.format(i), transpose)
        sources[ours + "pre_attention_norm.scale"] = take(ours + "pre_attention_norm.scale", attn + "layer_norm.weight")
        for theirs, mine in (("q", "query"), ("k", "key"), ("v", "value")):
            path = ours + "attention." + mine
            sources[path] = take(path, f"{attn}SelfAttention.{theirs}.weight", transpose, split_in)
        sources[ours + "attention.out"] = take(
            ours + "attention.out", attn + "SelfAttention.o.weight", transpose, split_out
        )
        sources[ours + "pre_mlp_norm.scale"] = take(ours + "pre_mlp_norm.scale", mlp + "layer_norm.weight")
        for name in ("wi_0", "wi_1", "wo"):
            path = ours + "mlp." + name
            sources[path] = take(path, f"{mlp}DenseReluDense.{name}.weight", transpose)
    check_unexpected([n for n in tensors if n not in used and not n.startswith(SKIPPED_PREFIXES)], where)
    return sources


def load_hf_encoder(path: str, config: T5Config, mesh: Optional[Mesh] = None, rules=None) -> T5Encoder:
    """Loads a HF T5/UMT5 encoder checkpoint (file or directory) into a `T5Encoder`.

    With `mesh`, parameters are placed shard by shard in their mesh sharding under `rules`.
    """
    return load_encoder(config, hf_sources(read_safetensors(path), config, path), mesh, rules)
