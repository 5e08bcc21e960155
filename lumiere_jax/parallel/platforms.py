"""Which jax backends a command starts: quiet runs on machines without a TPU chip.

With libtpu installed (the `tpu-aot` extra) and JAX_PLATFORMS unset, jax loads libtpu on every
machine to look for TPU chips, and libtpu logs initialisation errors (no accelerator type, no worker
hostnames, "Unable to initialize backend 'tpu'") before jax falls back to the CPU. Where the PCI bus
shows no TPU chip and no GPU, the CPU is the only backend there is, so we say so up front. On a TPU
VM, on a GPU machine, or with JAX_PLATFORMS set by the user, nothing changes.
"""
from __future__ import annotations

import importlib.util
import os

import jax
from jax._src import hardware_utils  # the PCI probe jax itself uses to decide whether it is on a TPU VM


def tpu_chips_attached() -> bool:
    return hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0


def _gpu_visible() -> bool:
    return hardware_utils.has_visible_nvidia_gpu() or hardware_utils.num_available_amd_gpus(stop_at=1) > 0


def use_cpu_without_accelerators() -> bool:
    """Selects the CPU backend when libtpu is installed on a machine with no TPU chip or GPU; returns
    whether it did. Call before the first jax computation (backends start lazily)."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return False
    if tpu_chips_attached() or _gpu_visible():
        return False
    jax.config.update("jax_platforms", "cpu")
    return True


def describe_absent_tpu_host() -> None:
    """Before loading libtpu compile-only (a topology description) on a machine with no TPU chip:
    libtpu still asks the cloud metadata server what the local host is, fails, and logs errors. Name a
    local host instead; the compiled topology is the one given to `get_topology_desc`, whatever this
    says. On a TPU VM (chips attached) the real values are left alone."""
    if tpu_chips_attached():
        return
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
