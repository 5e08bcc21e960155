"""Format-independent checkpoint loading: lazy tensors, the key/shape checks, sharded placement.

A reader (`hf_checkpoint`, `t5x_checkpoint`) maps every parameter path of our encoder to a
`Source`: the checkpoint tensor's name and a lazy view of it already in our layout (transposed,
head axis split, layer picked out of a scanned stack). Nothing is read until placement, and then
only the slices a device holds: `jax.make_array_from_callback` asks for each device's shard, the
view turns that index into an index of the stored tensor (a memory map or a tensorstore array),
and only those bytes are read. So an XXL encoder goes from disk straight into its mesh sharding
and never sits whole on one device (nor, for tensorstore, in host memory).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.t5 import T5Config, T5Encoder
from lumiere_jax.parallel import logical_axis_rules, state_shardings

Index = tuple[slice, ...]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: missing/unexpected tensor, bad shape, bad file."""


class LazyArray:
    """A read-only array whose slices are read on demand; `read` takes one unit-step slice per axis."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def read(self, index: Index) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} does not implement read()")

    def read_all(self) -> np.ndarray:
        return self.read(tuple(slice(0, n) for n in self.shape))


class InMemory(LazyArray):
    """A numpy array or memory map (a safetensors tensor, an array inlined in a t5x msgpack)."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, index: Index) -> np.ndarray:
        return np.asarray(self.array[index])


class Transposed(LazyArray):
    """`base.transpose(axes)`: HF stores torch Linear weights as [out, in], we use [in, out]."""

    def __init__(self, base: LazyArray, axes: Sequence[int]):
        if sorted(axes) != list(range(len(base.shape))):
            raise ValueError(f"axes {tuple(axes)} do not permute a {len(base.shape)}-D tensor")
        self.base, self.axes = base, tuple(axes)
        self.shape = tuple(base.shape[a] for a in self.axes)
        self.dtype = base.dtype

    def read(self, index: Index) -> np.ndarray:
        base_index = [slice(None)] * len(self.axes)
        for ours, theirs in enumerate(self.axes):
            base_index[theirs] = index[ours]
        return self.base.read(tuple(base_index)).transpose(self.axes)


class SplitAxis(LazyArray):
    """Axis `axis` of `base` (size a*b, row-major) seen as two axes (a, b): the joined
    [embed, heads*kv] kernels of HF and t5x examples/t5 as our [embed, heads, kv]."""

    def __init__(self, base: LazyArray, axis: int, sizes: tuple[int, int]):
        if axis >= len(base.shape) or base.shape[axis] != sizes[0] * sizes[1]:
            raise ValueError(f"axis {axis} of shape {base.shape} cannot be split into {sizes}")
        self.base, self.axis, self.sizes = base, axis, sizes
        self.shape = base.shape[:axis] + tuple(sizes) + base.shape[axis + 1 :]
        self.dtype = base.dtype

    def read(self, index: Index) -> np.ndarray:
        outer, inner = index[self.axis], index[self.axis + 1]
        b = self.sizes[1]
        joined = slice(outer.start * b, outer.stop * b)
        block = self.base.read(index[: self.axis] + (joined,) + index[self.axis + 2 :])
        block = block.reshape(block.shape[: self.axis] + (outer.stop - outer.start, b) + block.shape[self.axis + 1 :])
        return block[(slice(None),) * (self.axis + 1) + (inner,)]


class LayerOf(LazyArray):
    """Entry `layer` of axis `axis` of a scanned stack (t5x stacks layers on axis 1)."""

    def __init__(self, base: LazyArray, axis: int, layer: int):
        if axis >= len(base.shape) or not 0 <= layer < base.shape[axis]:
            raise ValueError(f"shape {base.shape} has no layer {layer} on axis {axis}")
        self.base, self.axis, self.layer = base, axis, layer
        self.shape = base.shape[:axis] + base.shape[axis + 1 :]
        self.dtype = base.dtype

    def read(self, index: Index) -> np.ndarray:
        picked = slice(self.layer, self.layer + 1)
        return self.base.read(index[: self.axis] + (picked,) + index[self.axis :]).squeeze(self.axis)


class Sliced(LazyArray):
    """Entries [start, stop) of axis `axis` of `base` (DeepFloyd IF-II's conv_in split into the
    noisy-image and low-res input convs)."""

    def __init__(self, base: LazyArray, axis: int, start: int, stop: int):
        if not 0 <= start < stop <= base.shape[axis]:
            raise ValueError(f"axis {axis} of shape {base.shape} has no entries [{start}, {stop})")
        self.base, self.axis, self.start = base, axis, start
        self.shape = base.shape[:axis] + (stop - start,) + base.shape[axis + 1:]
        self.dtype = base.dtype

    def read(self, index: Index) -> np.ndarray:
        own = index[self.axis]
        shifted = slice(own.start + self.start, own.stop + self.start)
        return self.base.read(index[: self.axis] + (shifted,) + index[self.axis + 1:])


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one parameter comes from: the checkpoint tensor's name and its view in our layout."""

    name: str
    array: LazyArray


def mapped(path: str, name: str, stored: LazyArray, *ops: Callable[[LazyArray], LazyArray]) -> Source:
    """Applies layout `ops` (transpose, split, pick layer) to `stored`, naming both on failure."""
    try:
        return Source(name, functools.reduce(lambda array, op: op(array), ops, stored))
    except ValueError as err:
        raise CheckpointError(
            f"parameter {path}: checkpoint tensor {name!r} has shape {stored.shape}, which does not fit "
            f"({err}); check that the encoder size and variant match the checkpoint"
        ) from None


def path_name(path: tuple) -> str:
    """('layers', 0, 'attention', 'query') -> 'layers.0.attention.query'."""
    return ".".join(str(p) for p in path)


def abstract_encoder(config: T5Config) -> T5Encoder:
    """The encoder's structure with shapes only (no memory): what readers load into."""
    return nnx.eval_shape(lambda: T5Encoder(config, rngs=Rngs(0)))


def check_unexpected(unexpected: Sequence[str], where: str) -> None:
    """Raises naming the checkpoint tensors that no parameter of the encoder consumes."""
    if unexpected:
        raise CheckpointError(
            f"{where} has {len(unexpected)} tensor(s) the encoder does not use: {sorted(unexpected)[:10]}; "
            "check the encoder size and variant (t5_1_1 shares one relative-position table, umt5 has one "
            "per layer)"
        )


def _normalize(index: tuple, shape: tuple[int, ...]) -> Index:
    out = []
    for s, n in zip(index, shape):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"strided shard index {s} is not supported")
        out.append(slice(start, stop))
    return tuple(out)


def place(source: Source, target: jax.ShapeDtypeStruct, sharding) -> jax.Array:
    """Reads `source` into an array of `target`'s dtype, shard by shard when `sharding` is given.

    Replicas of the same shard (mesh axes the parameter is not split over) share one read.
    """
    dtype = target.dtype
    if sharding is None:
        return jnp.asarray(source.array.read_all().astype(dtype))
    reads: dict = {}

    def shard(index):
        key = _normalize(index, target.shape)
        hashable = tuple((s.start, s.stop) for s in key)
        if hashable not in reads:
            reads[hashable] = source.array.read(key).astype(dtype)
        return reads[hashable]

    return jax.make_array_from_callback(target.shape, sharding, shard)


def load_encoder(
    config: T5Config,
    sources: Mapping[str, Source],
    mesh: Optional[Mesh] = None,
    rules=None,
) -> T5Encoder:
    """Builds a `T5Encoder` whose every parameter is read from `sources` (dotted path -> Source).

    With a `mesh`, each parameter is created directly in the sharding its logical axis names get
    under `rules` (None: the project's default rules); without one, on the default device.
    Missing parameters, parameters the model does not have and shape mismatches raise
    `CheckpointError` naming the paths.
    """
    graphdef, abstract_state = nnx.split(abstract_encoder(config))
    flat = nnx.to_flat_state(abstract_state)
    expected = {path_name(p) for p, _ in flat}
    missing = sorted(expected - set(sources))
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} parameter(s) of the encoder: {missing[:10]}")
    extra = sorted(set(sources) - expected)
    if extra:
        raise CheckpointError(f"checkpoint maps parameter(s) the encoder does not have: {extra[:10]}")
    shardings = None
    if mesh is not None:
        shardings = dict(nnx.to_flat_state(state_shardings(abstract_state, mesh, logical_axis_rules(rules))))
    leaves = []
    # Reading an XXL checkpoint takes minutes: show which parameter the load is at.
    for path, variable in tqdm(flat, desc="loading T5 encoder", unit="tensor", leave=False):
        name, target = path_name(path), variable.get_value()
        source = sources[name]
        if source.array.shape != target.shape:
            raise CheckpointError(
                f"parameter {name}: checkpoint tensor {source.name!r} gives shape {source.array.shape} but the "
                f"encoder expects {target.shape}; check the encoder size and variant"
            )
        sharding = shardings[path].get_value() if shardings is not None else None
        leaves.append((path, variable.replace(value=place(source, target, sharding))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def count_parameters(config: T5Config) -> int:
    """Number of parameters of an encoder with `config` (from its abstract state, no memory)."""
    _, state = nnx.split(abstract_encoder(config))
    return sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(state))
