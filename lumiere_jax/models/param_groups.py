"""NNX filters that split the U-Net's parameters into the groups the trainer freezes or trains.

- SPATIAL: the text-to-image U-Net's parameters (frozen when Lumiere trains its temporal part);
- TEMPORAL: the inflation's new modules (every attribute named `temporal_*`);
- CONDITIONING: the zero-initialised input conv of the extra conditioning channels.

Groups are told apart by attribute path, so they survive checkpoints and abstract (eval_shape)
models alike, and a T2I checkpoint's state is exactly the SPATIAL group of a STUNet.
"""
from flax import nnx, traverse_util


def _path_has(prefix: str):
    def matches(path, value) -> bool:
        return any(isinstance(key, str) and key.startswith(prefix) for key in path)

    return matches


TEMPORAL = nnx.All(nnx.Param, _path_has("temporal"))
CONDITIONING = nnx.All(nnx.Param, _path_has("cond_input"))
SPATIAL = nnx.All(nnx.Param, nnx.Not(nnx.Any(TEMPORAL, CONDITIONING)))
NEW = nnx.Any(TEMPORAL, CONDITIONING)  # what Lumiere trains on top of a frozen T2I

GROUPS = {"spatial": SPATIAL, "temporal": TEMPORAL, "conditioning": CONDITIONING}


def shapes(state) -> dict:
    """{'a/b/kernel': shape} of every parameter in an NNX state."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
    return {"/".join(map(str, path)): tuple(value.shape) for path, value in flat.items()}


def load_spatial(model: nnx.Module, t2i_state: nnx.State) -> None:
    """Copies a T2I U-Net's parameters into `model`'s spatial part (the inflation path).

    Every spatial parameter must be present with its shape; the error names the first paths that
    are missing, unexpected or mis-shaped, so a checkpoint of another backbone is caught early.
    """
    want, have = shapes(nnx.state(model, SPATIAL)), shapes(t2i_state)
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or unexpected:
        raise ValueError(f"T2I state does not match the spatial part: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for path, shape in want.items():
        if have[path] != shape:
            raise ValueError(f"shape mismatch at {path}: model {shape}, checkpoint {have[path]}")
    nnx.update(model, t2i_state)
