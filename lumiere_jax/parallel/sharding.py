"""Placing NNX modules and batches on a mesh from their logical axis names."""
from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

M = TypeVar("M", bound=nnx.Module)


def state_shardings(state: nnx.State, mesh: Mesh, rules) -> nnx.State:
    """NamedShardings for every variable of `state`, from its logical axis names."""
    with nnx.logical_axis_rules(rules):
        return nnx.get_named_sharding(state, mesh)


def abstract_sharded(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves carrying `shardings`: the arguments of an ahead-of-time lowering."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def create_sharded(constructor: Callable[[jax.Array], M], seed: int = 0, mesh: Optional[Mesh] = None,
                   rules=None) -> M:
    """Builds `constructor(key)` from the PRNG key of `seed`, with its initialisation compiled,
    directly in its mesh sharding (a constructor is typically `lambda key: Model(..., rngs=Rngs(key))`).

    Initialisation runs under `jax.jit` (one compiled program instead of hundreds of eager ops)
    with `out_shardings` from the variables' logical axes, so no device ever holds the whole
    model: this is how paper-scale models are built on a pod. The key is the program's argument,
    not a constant in it, so one compiled initialisation serves every seed. Without a mesh the
    module lands on the default device.
    """
    key = jax.random.key(seed)
    graphdef, abstract_state = nnx.split(nnx.eval_shape(constructor, key))
    init = lambda key: nnx.state(constructor(key))  # noqa: E731
    if mesh is None:
        return nnx.merge(graphdef, run_once(jax.jit(init), jax.devices()[0].platform, key))
    shardings = state_shardings(abstract_state, mesh, rules)
    with jax.set_mesh(mesh):
        state = run_once(jax.jit(init, out_shardings=shardings), mesh.devices.flat[0].platform, key)
    return nnx.merge(graphdef, state)


# LLVM's optimisation level on the backends that compile through it. An initialisation runs once:
# unoptimised code compiles about 3x faster there (the tiny STUNet's: 10.4 -> 2.9 s on 2 CPU cores)
# and its run time is negligible either way. TPU compiles keep their own defaults.
RUN_ONCE_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0},
                             "gpu": {"xla_backend_optimization_level": 0}}


def run_once(jitted, platform: str, *args):
    """Compiles and calls a program that runs a single time, compiled for compile speed."""
    return jitted.lower(*args).compile(compiler_options=RUN_ONCE_COMPILER_OPTIONS.get(platform))(*args)


def shard_module(module: M, mesh: Mesh, rules) -> M:
    """Moves an existing module's variables onto `mesh` according to their logical axes."""
    graphdef, state = nnx.split(module)
    state = jax.device_put(state, state_shardings(state, mesh, rules))
    return nnx.merge(graphdef, state)


def batch_sharding(mesh: Mesh, rules, ndim: int) -> NamedSharding:
    """Sharding of an activation/batch array: leading axis as 'batch', the rest replicated."""
    target = dict(rules).get("batch")
    return NamedSharding(mesh, PartitionSpec(target, *([None] * (ndim - 1))))


def batch_shard_count(mesh: Mesh, rules) -> int:
    """How many pieces the batch axis is cut into on `mesh` (a global batch must be a multiple)."""
    target = batch_sharding(mesh, rules, 1).spec[0]
    axes = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    count = 1
    for axis in axes:
        count *= mesh.shape[axis]
    return count
