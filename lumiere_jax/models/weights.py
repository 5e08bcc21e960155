"""The exported-weights format shared by the trainer (`--mode=export`, `init_from`) and the sampler.

An export is an Orbax checkpoint directory holding the model's parameters (the EMA for the
trained ones) as a nested dict, next to `config.json` with the config that built the model.
"""
from __future__ import annotations

import json
import pathlib

import jax
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from lumiere_jax.models import param_groups


def save_weights(path: pathlib.Path, params: nnx.State, config_dict: dict) -> None:
    path = pathlib.Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "params", nnx.to_pure_dict(params), force=True)
    (path / "config.json").write_text(json.dumps(config_dict, indent=2))


def _saved_paths(path: pathlib.Path) -> set:
    with ocp.StandardCheckpointer() as ckpt:
        tree = ckpt.metadata(path / "params").item_metadata.tree
    return {"/".join(map(str, k)) for k in traverse_util.flatten_dict(tree)}


def load_weights(path: pathlib.Path, model: nnx.Module) -> str:
    """Loads an export into `model` in place, in the shardings its parameters already have.

    A full export fills every parameter; an export of a T2I U-Net (no temporal parameters) fills
    STUNet's spatial part only (the inflation path); an export of a model without conditioning
    channels fills everything but the zero-initialised conditioning input (a text-to-video
    STUNet starting the conditional tasks' fine-tuning, which then computes exactly what it did).
    Returns 'full', 'spatial' or 'unconditional'.
    """
    path = pathlib.Path(path).absolute()
    if not (path / "params").is_dir():
        raise FileNotFoundError(f"no exported weights at {path} (expected {path / 'params'}); "
                                f"write them with --mode=export")
    saved = _saved_paths(path)
    full = nnx.state(model, nnx.Param)
    spatial = nnx.state(model, param_groups.SPATIAL)
    unconditional = nnx.state(model, nnx.All(nnx.Param, nnx.Not(param_groups.CONDITIONING)))
    flat = lambda s: {"/".join(map(str, k)) for k in traverse_util.flatten_dict(nnx.to_pure_dict(s))}  # noqa: E731
    for target, kind in ((full, "full"), (spatial, "spatial"), (unconditional, "unconditional")):
        if saved == flat(target):
            break
    else:
        missing = sorted(flat(spatial) - saved)[:3]
        unexpected = sorted(saved - flat(full))[:3]
        raise ValueError(f"weights at {path} do not fit this model: missing {missing}, unexpected {unexpected}")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            nnx.to_pure_dict(target))
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(path / "params", abstract)
    nnx.replace_by_pure_dict(target, restored)
    nnx.update(model, target)
    return kind
