"""Test set-up: 8 fake CPU devices, a persistent compilation cache, parsed absl flags.

The environment must be set before jax is imported anywhere, which is why it happens at the
top of conftest (pytest imports it before any test module).
"""
import os
import pathlib

# XLA's default (optimised) CPU code: unoptimised code compiles faster but runs ~1.8x slower, and
# the suite's sampling and training runs cost more than its compiles (measured on 2 cores).
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

# Grain workers and absl-based code read flags; under pytest nobody calls absl.app.run.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return REPO
