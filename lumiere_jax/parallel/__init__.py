"""Device meshes, logical-axis rules and sharded construction of NNX modules."""

from lumiere_jax.parallel.axes import partitioned
from lumiere_jax.parallel.mesh import MESH_AXES, logical_axis_rules, make_mesh, mesh_from_config
from lumiere_jax.parallel.sharding import abstract_sharded, batch_shard_count, batch_sharding, create_sharded, shard_module, state_shardings

__all__ = [
    "MESH_AXES",
    "abstract_sharded",
    "batch_shard_count",
    "batch_sharding",
    "create_sharded",
    "logical_axis_rules",
    "make_mesh",
    "mesh_from_config",
    "partitioned",
    "shard_module",
    "state_shardings",
]
