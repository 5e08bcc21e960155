"""Running the entry point as a user's shell does: a subprocess with JAX_PLATFORMS unset."""
import os
import subprocess
import sys

# What libtpu (the tpu-aot extra) prints when it is loaded on a machine without TPU chips.
LIBTPU_NOISE = ("could not determine TPU", "unexpected worker hostname", "Unable to initialize backend",
                "Failed to find host bounds", "InitGoogle")


def run_main(repo_root, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}  # the command picks its backend
    return subprocess.run([sys.executable, "-m", "lumiere_jax.main", *args], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=timeout)


def libtpu_noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(s in line for s in LIBTPU_NOISE)]


def terminal_lines(stderr: str) -> list[str]:
    """The non-empty lines of `stderr` other than progress-bar redraws (tqdm writes them after \\r)."""
    return [part for line in stderr.splitlines() for part in line.split("\r")
            if part.strip() and not part.startswith("train:")]
