"""Test set-up: 8 fake CPU devices, a persistent compilation cache, parsed absl flags.

The environment must be set before jax is imported anywhere, which is why it happens at the
top of conftest (pytest imports it before any test module).
"""
import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu (the tpu-aot extra) must not grab the backend

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("LUMIERE_JAX_CACHE", REPO / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# The same settings for subprocesses that tests start (jax reads them from the environment).
os.environ.update(JAX_COMPILATION_CACHE_DIR=str(CACHE), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
                  JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# Unoptimised XLA code (jax_disable_most_optimizations): most tests spend more time compiling than
# running, and their programs compile about a third faster this way (the tiny train step: 24 -> 15 s)
# while running up to 2x slower. Tests that mostly run (sampling the committed checkpoints, I3D) are
# marked `optimized_xla` and get XLA's defaults. Subprocesses inherit the setting: a program compiled
# in a test and in a process it starts must be the same (the exact-resume test compares them bitwise).
OPTIMIZATIONS_OFF = "JAX_DISABLE_MOST_OPTIMIZATIONS"
jax.config.update("jax_disable_most_optimizations", True)
os.environ[OPTIMIZATIONS_OFF] = "1"

# Grain workers and absl-based code read flags; under pytest nobody calls absl.app.run.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO


@pytest.fixture(autouse=True)
def xla_optimizations(request):
    """XLA's default optimisations for tests marked `optimized_xla`, in this process and its children."""
    if request.node.get_closest_marker("optimized_xla") is None:
        yield
        return
    jax.config.update("jax_disable_most_optimizations", False)
    os.environ[OPTIMIZATIONS_OFF] = "0"
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)
        os.environ[OPTIMIZATIONS_OFF] = "1"
