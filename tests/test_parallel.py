"""Mesh construction and rules: clear errors for meshes and rules that cannot work."""
import jax
import pytest

from lumiere_jax.config import base_config
from lumiere_jax.parallel import logical_axis_rules, make_mesh, mesh_from_config
from lumiere_jax.parallel.mesh import mesh_shape


def test_minus_one_is_filled_from_the_device_count():
    assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    mesh = make_mesh({"data": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "tensor": 2}


@pytest.mark.parametrize("shape, message", [
    ({"data": 3, "fsdp": 2}, "needs 6 devices but 8 are available"),
    ({"data": -1, "fsdp": 3}, "does not divide 8 devices"),
    ({"data": -1, "fsdp": -1}, "more than one -1"),
    ({"model": 2}, "unknown axes"),
])
def test_meshes_that_do_not_fit_fail_with_the_numbers(shape, message):
    with pytest.raises(ValueError, match=message):
        make_mesh(shape)


def test_rules_naming_an_unknown_mesh_axis_fail():
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        logical_axis_rules([["embed", "model"]])
    assert dict(logical_axis_rules([["batch", ["data", "fsdp"]]]))["batch"] == ("data", "fsdp")


def test_multi_slice_mesh_needs_a_multi_slice_topology():
    config = base_config().mesh
    assert mesh_from_config(config).devices.size == jax.device_count()
    config.dcn.data = 2
    with pytest.raises(ValueError, match="asks for 2 slices but the devices form no multi-slice topology"):
        mesh_from_config(config)


def test_batch_shard_count_follows_the_batch_rule():
    from lumiere_jax.parallel import batch_shard_count

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert batch_shard_count(mesh, logical_axis_rules()) == 4  # batch over data x fsdp
    assert batch_shard_count(mesh, logical_axis_rules([["batch", "data"]])) == 2
    assert batch_shard_count(mesh, logical_axis_rules([["batch", None]])) == 1


def test_a_run_once_program_is_compiled_unoptimised_and_computes_the_same(monkeypatch):
    """Initialisations are compiled at LLVM level 0 (compile speed; they run once): the same values
    as the default-optimised program to float rounding, and the option really reaches the compiler."""
    import jax.numpy as jnp
    import numpy as np

    from lumiere_jax.parallel import sharding

    init = jax.jit(lambda: jax.random.normal(jax.random.key(0), (64, 48)) @ jnp.ones((48, 8)) / 7.0)
    np.testing.assert_allclose(sharding.run_once(init, "cpu"), init(), rtol=1e-6, atol=1e-6)
    monkeypatch.setitem(sharding.RUN_ONCE_COMPILER_OPTIONS, "cpu", {"xla_backend_optimization_level": "x"})
    with pytest.raises(Exception, match="xla_backend_optimization_level"):
        sharding.run_once(jax.jit(lambda: jnp.zeros(3) + 1.0), "cpu")
