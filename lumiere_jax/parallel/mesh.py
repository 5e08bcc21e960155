"""The device mesh and the one place that maps logical axes to mesh axes."""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")

# First match wins (flax's convention). Parameters: input features over fsdp, output features and
# heads over tensor. Activations: the batch over data and fsdp together.
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("norm", None),
    ("relpos", None),
)


def logical_axis_rules(rules: Optional[Iterable[Sequence]] = None) -> tuple:
    """Returns rules as a tuple of (logical_name, mesh_axis | tuple | None) pairs.

    `rules` comes from `config.mesh.rules` (lists of two items, since ml_collections has no
    tuples in overrides); None gives DEFAULT_RULES. Unknown mesh axes are rejected here so a
    typo fails at start-up rather than as an opaque sharding error inside jit.
    """
    if rules is None:
        return DEFAULT_RULES
    out = []
    for rule in rules:
        if len(rule) != 2:
            raise ValueError(f"mesh rule {rule!r} must be a pair (logical_axis, mesh_axis)")
        name, target = rule
        targets = target if isinstance(target, (list, tuple)) else (target,)
        for t in targets:
            if t is not None and t not in MESH_AXES:
                raise ValueError(f"mesh rule {rule!r} names unknown mesh axis {t!r}; use one of {MESH_AXES}")
        out.append((name, tuple(target) if isinstance(target, (list, tuple)) else target))
    return tuple(out)


def mesh_shape(shape: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves a {'data': -1, 'fsdp': 2, 'tensor': 1} mapping to sizes for `num_devices`."""
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh.shape has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh.shape {dict(shape)} has more than one -1; at most one axis is filled in")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh.shape {dict(shape)} has a size that is not positive (or -1)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(f"mesh.shape {dict(shape)} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh.shape {dict(shape)} needs {math.prod(sizes)} devices but {num_devices} are available"
        )
    return tuple(sizes)


def make_mesh(shape: Mapping[str, int], devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh with Auto axes (GSPMD propagation)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(shape, len(devices))
    if devices == list(jax.devices()):
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_from_config(mesh_config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """The mesh of `config.mesh`: `shape` within a slice, times `dcn` across slices (multi-slice pods).

    With `dcn` sizes whose product is S > 1, `shape` describes one slice (its -1 filled from the
    devices per slice) and each mesh axis spans `shape[a] * dcn[a]` devices, the slow data-center
    network carrying only the axes `dcn` names (typically 'data').
    """
    dcn = {a: int(v) for a, v in dict(mesh_config.get("dcn", None) or {}).items()}
    slices = math.prod(dcn.values()) if dcn else 1
    if slices <= 1:
        return make_mesh(dict(mesh_config.shape), devices)
    devices = list(jax.devices() if devices is None else devices)
    found = {getattr(d, "slice_index", None) for d in devices}
    if None in found or len(found) != slices:
        raise ValueError(f"mesh.dcn={dcn} asks for {slices} slices but the devices form "
                         f"{'no multi-slice topology' if None in found else f'{len(found)} slices'}")
    from jax.experimental import mesh_utils

    ici = mesh_shape(dict(mesh_config.shape), len(devices) // slices)
    dcn_sizes = mesh_shape(dcn, slices)
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn_sizes, devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
