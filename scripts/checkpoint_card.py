"""What the provenance file of a committed demo checkpoint says of its training run, machine, model and
sampler; shared by the scripts that score the demo checkpoints (no flags of its own)."""
import json
import os
import pathlib
import platform

import jax
from flax import nnx

from lumiere_jax.models.report import parameter_counts
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig


def parameters(config) -> dict:
    model = nnx.eval_shape(lambda: UNet(UNetConfig.from_config(config.model), rngs=Rngs(0)))
    counts = parameter_counts(model)
    return {k: counts[k] for k in counts if k != "per_level"}


def hardware() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpu_cores": os.cpu_count(), "machine": platform.machine(),
            "jax_devices": [str(d) for d in jax.devices()], "jax": jax.__version__}


def run_card(config, run_dir: str, train_command: str, config_file: str) -> dict:
    """What a provenance file says of the training run, the machine, the model and the sampler."""
    run = json.loads((pathlib.Path(run_dir) / "train_summary.json").read_text())
    return {
        "checkpoint": config.sample.base_checkpoint,
        "train_command": train_command,
        "config": config_file,
        "steps": run["step"],
        # wall_seconds covers the last invocation only: steps start_step..steps (0 unless it resumed)
        "start_step": run["start_step"],
        "wall_seconds": run["wall_seconds"],
        "seconds_per_step": run["last_metrics"]["train/step_seconds"],
        "final_loss": run["losses"][-1],
        "hardware": hardware(),
        "parameters": parameters(config),
        "sampling": {"sampler": config.sample.sampler, "num_steps": config.sample.num_steps,
                     "guidance_scale": config.sample.guidance_scale,
                     "threshold_percentile": config.sample.threshold_percentile,
                     "resample": config.sample.resample, "seed": config.sample.seed},
    }
