"""Runs a tiny training in its own process (for the SIGKILL/SIGTERM and multi-process tests).

Usage: python tests/run_train.py WORKDIR STEPS CHECKPOINT_EVERY [LOCAL_DEVICES]
With JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID set it joins a multi-process job.
"""
import os
import sys

if len(sys.argv) > 4:  # multi-process: this process's own device count, not the test session's
    flags = os.environ.pop("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    if flags:  # XLA reads a value that is not a flag as a file name
        os.environ["XLA_FLAGS"] = flags
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

if len(sys.argv) > 4:
    jax.config.update("jax_num_cpu_devices", int(sys.argv[4]))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from absl import flags  # noqa: E402

from lumiere_jax import parallel  # noqa: E402
from lumiere_jax.parallel.distributed import maybe_initialize  # noqa: E402
from lumiere_jax.train.trainer import train  # noqa: E402
from train_helpers import SyntheticBatches, train_config  # noqa: E402

flags.FLAGS.mark_as_parsed()
maybe_initialize()
config = train_config(steps=int(sys.argv[2]))
config.train.checkpoint_every = int(sys.argv[3])
mesh = parallel.make_mesh(dict(config.mesh.shape))
train(config, sys.argv[1], SyntheticBatches(config, mesh, parallel.logical_axis_rules()))
