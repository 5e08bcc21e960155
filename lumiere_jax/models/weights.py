"""The exported-weights format shared by the trainer (`--mode=export`, `init_from`) and the sampler.

An export is an Orbax checkpoint directory holding the model's parameters (the EMA for the
trained ones) as a nested dict, next to `config.json` with the config that built the model.
`load_weights` also reads a diffusers DeepFloyd IF U-Net (models/diffusers_if.py), the start of
an IF-based Lumiere.
"""
from __future__ import annotations

import json
import logging
import pathlib
from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from lumiere_jax.models import param_groups
from lumiere_jax.models.diffusers_if import is_diffusers_unet, load_diffusers_unet
from lumiere_jax.parallel.sharding import state_shardings

MIN_BYTES_PER_REPLICA_SLICE = 16 * 2**20
M = TypeVar("M", bound=nnx.Module)


def register_array_handler() -> None:
    """Orbax's jax.Array handler for every checkpoint we write (exports and train states), set
    before the first write (once per process).

    Orbax writes a replicated array "replica-parallel" by default: each replica saves a slice of
    it, and every slice is a small compiled program (hundreds per save of a small model: ~30 s of
    compiles, never cached). Below MIN_BYTES_PER_REPLICA_SLICE per slice one replica writes the
    whole array; big arrays on a pod still share the work.
    """
    global _array_handler_registered
    if _array_handler_registered:
        return
    handler = ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=MIN_BYTES_PER_REPLICA_SLICE)
    absl_logger = logging.getLogger("absl")  # Orbax warns that it replaces its default: that is the point
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.setLevel(level)
    _array_handler_registered = True


_array_handler_registered = False


def save_weights(path: pathlib.Path, params: nnx.State, config_dict: dict) -> None:
    path = pathlib.Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    register_array_handler()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path / "params", nnx.to_pure_dict(params), force=True)
    (path / "config.json").write_text(json.dumps(config_dict, indent=2))


def _saved_shapes(path: pathlib.Path) -> dict:
    with ocp.StandardCheckpointer() as ckpt:
        tree = ckpt.metadata(path / "params").item_metadata.tree
    return {"/".join(map(str, k)): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _restore_into(path: pathlib.Path, shardings: dict) -> dict:
    """{'a/b/kernel': array} of an export, the names in `shardings` restored straight into those
    shardings and every other array (ignored by the caller) onto one device."""
    with ocp.StandardCheckpointer() as ckpt:
        tree = ckpt.metadata(path / "params").item_metadata.tree
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    where = traverse_util.unflatten_dict({k: shardings.get("/".join(map(str, k)), one)
                                          for k in traverse_util.flatten_dict(tree)})
    restored = _restore(path, tree, where)
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(restored).items()}


def load_weights(path: pathlib.Path, model: nnx.Module) -> str:
    """Loads an export into `model` in place, in the shardings its parameters already have.

    A full export fills every parameter; an export of a T2I U-Net (no temporal parameters) fills
    STUNet's spatial part only (the inflation path); an export of a model without conditioning
    channels fills everything but the zero-initialised conditioning input (a text-to-video
    STUNet starting the conditional tasks' fine-tuning, which then computes exactly what it did).
    A diffusers DeepFloyd IF U-Net directory fills the spatial part (and IF-II's low-res input)
    through `diffusers_if.load_diffusers_unet`. Returns 'full', 'spatial' or 'unconditional'.
    """
    path = pathlib.Path(path).absolute()
    if is_diffusers_unet(path):
        return load_diffusers_unet(path, model)
    saved = set(_saved_shapes(export_dir(path)))
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
    pure = nnx.to_pure_dict(target)
    nnx.replace_by_pure_dict(target, _restore(path, pure, jax.tree.map(lambda x: x.sharding, pure)))
    nnx.update(model, target)
    return kind


def export_dir(path) -> pathlib.Path:
    """`path` as an absolute export directory (one holding `params/`), or a FileNotFoundError saying how
    to write one."""
    path = pathlib.Path(path).absolute()
    if not (path / "params").is_dir():
        raise FileNotFoundError(f"no exported weights at {path} (expected {path / 'params'}); "
                                f"write them with --mode=export")
    return path


def restore_model(path: pathlib.Path, constructor: Callable[[jax.Array], M], mesh=None, rules=None) -> M:
    """The module `constructor(key)` builds (the constructor `create_sharded` takes), every variable
    read from the full export at `path` straight into its sharding on `mesh` (onto the default device
    without one).

    Nothing is initialised: sampling an export compiles and runs no initialisation program (seconds
    for a small model, and at paper scale a second copy of the weights in memory while the random
    values are replaced). The export must hold exactly the module's variables, each of its shape.
    """
    path = export_dir(path)
    graphdef, state = nnx.split(nnx.eval_shape(constructor, jax.random.key(0)))
    pure = nnx.to_pure_dict(state)
    want = param_groups.shapes(state)
    saved = _saved_shapes(path)
    if saved != want:
        missing, unexpected = sorted(set(want) - set(saved))[:3], sorted(set(saved) - set(want))[:3]
        misshapen = sorted(f"{k}: {saved[k]} (model: {want[k]})" for k in set(want) & set(saved) if saved[k] != want[k])[:3]
        raise ValueError(f"weights at {path} do not fit this model: missing {missing}, unexpected {unexpected}, "
                         f"misshapen {misshapen}")
    if mesh is None:
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: one, pure)
    else:
        shardings = nnx.to_pure_dict(state_shardings(state, mesh, rules))
    nnx.replace_by_pure_dict(state, _restore(path, pure, shardings))
    return nnx.merge(graphdef, state)


def _restore(path: pathlib.Path, like: dict, shardings: dict) -> dict:
    """The export's arrays as the nested dict `like` (of arrays or shape structs), each in its sharding."""
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), like, shardings)
    with ocp.StandardCheckpointer() as ckpt:
        return ckpt.restore(path / "params", abstract)


def check_style_alpha(alpha) -> float:
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"sample.style_alpha={alpha!r} must be a number in [0, 1] (0: the base model's spatial "
                         "weights, 1: the style's)")
    return float(alpha)


@jax.jit
def _mix(alpha: jax.Array, weights: dict, style: dict) -> dict:
    """alpha * style + (1 - alpha) * weights for every entry: one compiled program for all parameters
    and every alpha (eagerly, each parameter shape compiled its own few ops)."""
    return {name: ((1.0 - alpha) * w + alpha * style[name].astype(w.dtype)).astype(w.dtype)
            for name, w in weights.items()}


def interpolate_spatial(model: nnx.Module, style_path, alpha: float) -> dict:
    """Stylized generation (Lumiere section 4): W = alpha W_style + (1 - alpha) W for every SPATIAL
    parameter of `model`, in place, from a style export (a T2I-style fine-tune of the same backbone,
    `--mode=export` with train.trainable=spatial); temporal and conditioning parameters are not touched.

    Temporal or conditioning weights in the style export are ignored (a full export may be given);
    a missing or mis-shaped spatial parameter is an error naming it. Returns what was done.
    """
    path = pathlib.Path(style_path).absolute()
    check_style_alpha(alpha)
    if not (path / "params").is_dir():
        raise FileNotFoundError(f"sample.style_checkpoint {path} is not an export (expected {path / 'params'}); "
                                "write one with --mode=export of a train.trainable=spatial run")
    spatial = nnx.state(model, param_groups.SPATIAL)
    want = param_groups.shapes(spatial)
    have = _saved_shapes(path)
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"style checkpoint {path} is not of this backbone: missing spatial parameters {missing[:3]}")
    for name, shape in want.items():
        if have[name] != shape:
            raise ValueError(f"style checkpoint {path} is not of this backbone: {name} is {have[name]}, "
                             f"the model's is {shape}")
    current = {"/".join(map(str, k)): (k, v) for k, v in traverse_util.flatten_dict(nnx.to_pure_dict(spatial)).items()}
    saved = _restore_into(path, {name: value.sharding for name, (_, value) in current.items()})
    mixed = _mix(jnp.float32(alpha), {name: value for name, (_, value) in current.items()}, saved)
    by_key = {key: mixed[name] for name, (key, _) in current.items()}
    nnx.replace_by_pure_dict(spatial, traverse_util.unflatten_dict(by_key))
    nnx.update(model, spatial)
    return {"style_checkpoint": str(path), "style_alpha": float(alpha), "interpolated": len(want),
            "ignored": sorted(set(have) - set(want))[:3] + (["..."] if len(set(have) - set(want)) > 3 else [])}
