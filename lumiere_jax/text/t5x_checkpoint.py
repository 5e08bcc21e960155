"""t5x checkpoint directories -> our encoder, without t5x (which cannot be installed).

A t5x checkpoint directory (`.../checkpoint_1000000/`) holds a msgpack file `checkpoint`,
`{'optimizer': {'target': params, 'state': ...}}`, whose parameter leaves are either arrays or
tensorstore specs of zarr arrays stored next to it in folders named by the dotted parameter path
(`target.encoder.layers_0.attention.query.kernel`). Spec paths are relative to the directory
(GCS specs carry a placeholder bucket; only their path is used) and are resolved inside it only:
a spec pointing elsewhere is refused, so a checkpoint cannot make us read arbitrary files.

Two layouts, detected from the keys:

- examples/t5 (`encoder/layers_{i}/...`): attention kernels joined, query/key/value
  [d, h*dk] and out [h*dk, d]; T5.1.1's shared table at `encoder/relpos_bias/rel_embedding`
  [h, 32]; a per-layer (UMT5) table at `encoder/layers_{i}/relpos_bias/rel_embedding`.
- scanned / scalable_t5 (`encoder/encoder/...`): every layer parameter stacked on axis 1;
  query/key/value [d, L, h, dk], out [h, L, dk, d], norms [d, L], MLP [d, L, ff] / [ff, L, d];
  UMT5's tables stacked as `encoder/encoder/relpos_bias/rel_embedding` [h, L, 32] (the layout
  of the released UMT5 checkpoints); a T5.1.1 shared table as in examples/t5.

Shared by both: `token_embedder/embedding` [V, d], `encoder/encoder_norm/scale` [d]. Decoder
parameters are skipped; any other tensor the encoder does not consume is an error.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import tensorstore as ts
from flax import serialization
from jax.sharding import Mesh

from lumiere_jax.models.t5 import T5Config, T5Encoder
from lumiere_jax.text.checkpoint import (
    CheckpointError,
    InMemory,
    LayerOf,
    LazyArray,
    SplitAxis,
    check_unexpected,
    load_encoder,
    mapped,
)

MSGPACK_FILE = "checkpoint"
TENSORSTORE_DRIVERS = ("zarr", "zarr3", "n5")


class TensorStoreArray(LazyArray):
    """A zarr array of the checkpoint, opened on first use and read slice by slice."""

    def __init__(self, spec: dict, name: str):
        self.spec, self.name = spec, name
        self._store = None

    @property
    def store(self) -> ts.TensorStore:
        if self._store is None:
            try:
                self._store = ts.open(self.spec, open=True, read=True).result()
            except ValueError as err:
                raise CheckpointError(f"cannot open the tensorstore array of {self.name!r}: {err}") from None
        return self._store

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.store.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.store.dtype.numpy_dtype

    def read(self, index) -> np.ndarray:
        try:
            return np.asarray(self.store[index].read().result())
        except ValueError as err:  # a missing or damaged chunk
            raise CheckpointError(f"cannot read the tensorstore array of {self.name!r}: {err}") from None


def _resolve_spec(spec: dict, directory: str, name: str) -> dict:
    """A spec that opens the array inside `directory`, whatever kvstore the checkpoint recorded."""
    driver = spec.get("driver")
    if driver not in TENSORSTORE_DRIVERS:
        raise CheckpointError(
            f"{name!r}: unsupported tensorstore driver {driver!r} (expected one of {TENSORSTORE_DRIVERS})"
        )
    kvstore = spec.get("kvstore", {})
    if not isinstance(kvstore, dict) or kvstore.get("driver", "file") not in ("file", "gcs"):
        raise CheckpointError(f"{name!r}: unsupported kvstore {kvstore!r}; expected a file or gcs path")
    relative = os.path.join(kvstore.get("path", ""), spec.get("path", ""))
    root = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(root, relative))
    if not relative or os.path.commonpath([root, path]) != root or path == root:
        raise CheckpointError(
            f"{name!r}: tensorstore path {relative!r} resolves to {path}, outside the checkpoint directory "
            f"{root}; only paths inside it are read"
        )
    return {"driver": driver, "kvstore": {"driver": "file", "path": path}}


def _flatten(tree: dict, directory: str, prefix: str = "") -> dict[str, LazyArray]:
    """'/'-joined parameter names -> arrays; a dict with a 'driver' key is a tensorstore leaf."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "driver" not in value:
            out.update(_flatten(value, directory, name + "/"))
        elif isinstance(value, dict):
            out[name] = TensorStoreArray(_resolve_spec(value, directory, name), name)
        else:
            out[name] = InMemory(np.asarray(value))
    return out


def read_t5x(directory: str) -> dict[str, LazyArray]:
    """The parameters ('target') of a t5x checkpoint directory, by '/'-joined name, unread."""
    path = os.path.join(directory, MSGPACK_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{directory} has no t5x '{MSGPACK_FILE}' file; point config.text.checkpoint at a checkpoint_<step> folder"
        )
    with open(path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except Exception as err:  # msgpack raises several unrelated types for a damaged file
            raise CheckpointError(f"{path} is not a readable msgpack checkpoint ({err}); copy it again") from None
    tree = state.get("optimizer", state) if isinstance(state, dict) else None
    target = tree.get("target") if isinstance(tree, dict) else None
    if not isinstance(target, dict):
        raise CheckpointError(f"{path} has no 'optimizer/target' (or 'target') parameter tree")
    return _flatten(target, directory)


def detect_layout(params: dict[str, LazyArray], where: str) -> str:
    """'scanned' for scalable_t5 stacks, 'examples' for per-layer t5x/examples/t5 checkpoints."""
    if any(n.startswith("encoder/encoder/") for n in params):
        return "scanned"
    if any(n.startswith("encoder/layers_") for n in params):
        return "examples"
    raise CheckpointError(f"{where}: no encoder layers found (neither encoder/layers_0/... nor encoder/encoder/...)")


def t5x_sources(params: dict[str, LazyArray], config: T5Config, where: str) -> dict:
    """Maps our parameter paths to t5x names in either layout (see the module docstring)."""
    layout = detect_layout(params, where)
    used: set[str] = set()
    h, k, num_layers = config.num_heads, config.head_dim, config.num_layers

    def take(path: str, name: str, *ops):
        if name not in params:
            raise CheckpointError(f"{where} lacks tensor {name!r} for parameter {path}")
        used.add(name)
        stored = params[name]
        if layout == "scanned" and name.startswith("encoder/encoder/"):
            if len(stored.shape) < 2 or stored.shape[1] != num_layers:
                raise CheckpointError(
                    f"{where}: scanned tensor {name!r} has shape {stored.shape}, expected {num_layers} layers on "
                    "axis 1; check the encoder size"
                )
        return mapped(path, name, stored, *ops)

    sources = {
        "embedding": take("embedding", "token_embedder/embedding"),
        "final_norm.scale": take("final_norm.scale", "encoder/encoder_norm/scale"),
    }
    if not config.per_layer_relpos:
        sources["relpos.rel_embedding"] = take("relpos.rel_embedding", "encoder/relpos_bias/rel_embedding")
    for i in range(num_layers):
        if layout == "scanned":
            prefix, layer = "encoder/encoder/", (lambda a, i=i: LayerOf(a, 1, i),)
            split_in = split_out = ()
        else:
            prefix, layer = f"encoder/layers_{i}/", ()
            split_in, split_out = (lambda a: SplitAxis(a, 1, (h, k)),), (lambda a: SplitAxis(a, 0, (h, k)),)
        ours = f"layers.{i}."
        names = {
            "pre_attention_norm.scale": "pre_attention_layer_norm/scale",
            "pre_mlp_norm.scale": "pre_mlp_layer_norm/scale",
            "mlp.wi_0": "mlp/wi_0/kernel",
            "mlp.wi_1": "mlp/wi_1/kernel",
            "mlp.wo": "mlp/wo/kernel",
        }
        if config.per_layer_relpos:
            names["relpos.rel_embedding"] = "relpos_bias/rel_embedding"
        for mine, theirs in names.items():
            sources[ours + mine] = take(ours + mine, prefix + theirs, *layer)
        for mine in ("query", "key", "value"):
            sources[ours + "attention." + mine] = take(
                ours + "attention." + mine, f"{prefix}attention/{mine}/kernel", *layer, *split_in
            )
        sources[ours + "attention.out"] = take(
            ours + "attention.out", prefix + "attention/out/kernel", *layer, *split_out
        )
    check_unexpected([n for n in params if n not in used and not n.startswith("decoder/")], where)
    return sources


def load_t5x_encoder(directory: str, config: T5Config, mesh: Optional[Mesh] = None, rules=None) -> T5Encoder:
    """Loads the encoder of a t5x checkpoint directory (either layout) into a `T5Encoder`.

    With `mesh`, each device reads only its own slices of the zarr arrays.
    """
    return load_encoder(config, t5x_sources(read_t5x(directory), config, directory), mesh, rules)
