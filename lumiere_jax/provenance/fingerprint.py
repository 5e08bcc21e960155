"""The SHA-256 of a model's parameters: the checkpoint hash that the watermark and the C2PA manifest carry."""
from __future__ import annotations

import hashlib

import numpy as np


def params_sha256(params: dict) -> str:
    """Hex SHA-256 over a nested dict of parameter arrays (an export's `params/`, or
    `nnx.to_pure_dict(nnx.state(model, nnx.Param))` of the model that loaded it): every leaf's path
    ('a/b/kernel'), dtype name, shape and C-order bytes, in sorted path order.

    Why the values and not the export's files: Orbax writes timestamps and layout-dependent files, so
    the same weights saved twice hash differently, and a DeepFloyd IF directory is another format
    altogether; the values are what made the video, whatever the file format or sharding. An array
    spread over several processes is gathered one leaf at a time (every process must call this).
    """
    import jax
    from flax import traverse_util
    from jax.experimental import multihost_utils

    flat = {"/".join(map(str, path)): value for path, value in traverse_util.flatten_dict(params).items()}
    digest = hashlib.sha256()
    for name in sorted(flat):
        value = flat[name]
        if isinstance(value, jax.Array) and not value.is_fully_addressable:
            value = multihost_utils.process_allgather(value, tiled=True)
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{name}\0{array.dtype.name}\0{array.shape}\0".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def model_sha256(model) -> str:
    """params_sha256 of an NNX model's parameters, as loaded (call before anything changes them)."""
    from flax import nnx

    return params_sha256(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
