"""Multi-host start-up: `jax.distributed.initialize` on TPU pods and coordinator-based GPU clusters."""
from __future__ import annotations

import os

import jax
from absl import logging

COORDINATOR_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def maybe_initialize() -> bool:
    """Joins the job's other processes when there are any; returns whether it did.

    - GPU clusters / plain environments: JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID
      (set by launch/gpu scripts, from SLURM or by hand);
    - Cloud TPU pods: a multi-worker slice (TPU_WORKER_HOSTNAMES lists several hosts), where JAX
      discovers everything itself.
    """
    if jax.distributed.is_initialized():
        return True
    present = [v for v in COORDINATOR_VARS if os.environ.get(v)]
    if present:
        missing = [v for v in COORDINATOR_VARS if not os.environ.get(v)]
        if missing:
            raise ValueError(f"multi-process run needs {', '.join(COORDINATOR_VARS)}; missing {', '.join(missing)}")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()
    else:
        return False
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())
    return True
