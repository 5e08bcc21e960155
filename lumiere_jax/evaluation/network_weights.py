"""Filling a metric network (I3D, C3D, CLIP) from the arrays of a published checkpoint.

Every loader turns its file into one flat {'path/to/param': array} dict in our naming; this
module checks that dict against the model's parameters as a whole, so that a file that does not
fit names every missing, unexpected and mis-shaped tensor at once (not the first KeyError deep
inside a forward pass), and the network is then filled in place.
"""
from __future__ import annotations

import hashlib

import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

MAX_NAMED = 8  # per kind of problem, in the error message


class WeightsMismatch(ValueError):
    """A checkpoint's tensors do not fit the network it is loaded into."""


def model_shapes(model: nnx.Module, kind=nnx.Variable) -> dict[str, tuple]:
    """{'a/b/kernel': shape} of every variable of `kind` in `model` (params and batch-norm stats)."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, kind)))
    return {"/".join(map(str, k)): tuple(v.shape) for k, v in flat.items()}


def _named(names, limit: int = MAX_NAMED) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_arrays(expected: dict[str, tuple], arrays: dict[str, np.ndarray], source: str) -> None:
    """WeightsMismatch naming each missing, unexpected and mis-shaped tensor of `arrays`."""
    missing = set(expected) - set(arrays)
    unexpected = set(arrays) - set(expected)
    misshaped = [f"{k} {tuple(np.shape(arrays[k]))} (expected {expected[k]})"
                 for k in sorted(set(expected) & set(arrays)) if tuple(np.shape(arrays[k])) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_named(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_named(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped {len(misshaped)}: {_named(misshaped)}")
    if problems:
        raise WeightsMismatch(f"{source} does not fit this network ({'; '.join(problems)}); check that the file "
                              "is the checkpoint this loader reads and that the network config matches it")


def assign_arrays(model: nnx.Module, arrays: dict[str, np.ndarray], source: str, kind=nnx.Variable) -> None:
    """Checks `arrays` against every variable of `kind` in `model`, then fills them in place
    (each cast to its variable's dtype)."""
    check_arrays(model_shapes(model, kind), arrays, source)
    state = nnx.state(model, kind)
    pure = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    filled = {k: jnp.asarray(arrays["/".join(map(str, k))], dtype=v.dtype) for k, v in pure.items()}
    nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(filled))
    nnx.update(model, state)


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a weights file: what feature statistics record as 'computed with'."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
