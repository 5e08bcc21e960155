"""Paper-scale train steps compiled for TPU slices on this CPU machine: the README "Scale" table.

    python benchmarks/compile_paper.py --topologies=v5p:2x2x2,v6e:2x4 [--batch_per_chip=1] \
        [--config=configs/stunet_paper.py] [--config.model.remat=full ...] [--variant=NAME] [--out=DIR]

For each topology it runs `--mode=compile_report` (lumiere_jax.train.compile_report) with the global
batch set to `batch_per_chip` x chips, writes DIR/<topology>.json, and prints one markdown table row
per topology. Needs the `tpu-aot` extra (libtpu). Each compile takes minutes at paper scale. `--variant`
compiles the step with another formulation of the norms or temporal convs (benchmarks/block_variants.py).
"""
import copy
import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU programs come from topology descriptions

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from block_variants import VARIANTS  # noqa: E402
from lumiere_jax.train.compile_report import compile_report, tpu_slice  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/stunet_paper.py", "Model/training config.")
flags.DEFINE_list("topologies", ["v5p:2x2x2", "v6e:2x4"], "TPU topologies, GENERATION:AxB[xC].")
flags.DEFINE_float("batch_per_chip", 1.0, "Clips per chip (0.5: one clip per two chips, with tensor "
                   "parallelism); the global batch is this times the chips.")
flags.DEFINE_string("out", "compile_reports", "Directory for the JSON reports.")
flags.DEFINE_enum("variant", "default", list(VARIANTS), "Formulation of the norms / temporal convs.")
FLAGS = flags.FLAGS

HEADER = ("| topology | chips | mesh (data, fsdp, tensor) | batch (per chip) | arguments | temporaries | total / HBM "
          "per chip (GiB) | fits | TFLOP per step | GiB accessed per chip | step at 100% MFU | step, compiler's estimate (MFU) "
          "| compile |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
    mesh = ", ".join(str(v) for v in r["mesh"].values())
    batch = f"{r['global_batch']} ({r['batch_per_chip']:g})"
    if "memory_per_device_gib" not in r:
        return (f"| {r['topology']} | {r['chips']} | {mesh} | {batch} | - | - | - / {r['hbm_gib_per_device']:g} | "
                f"no: {r['compile_error']} | - | - | - | - | - |")
    m, e = r["memory_per_device_gib"], r["compiler_estimate"]
    estimate = f"{e['step_seconds']:.3f} s ({e['mfu']:.0%})" if e else "-"
    return (f"| {r['topology']} | {r['chips']} | {mesh} | {batch} | {m['arguments']:.1f} | {m['temporaries']:.1f} | "
            f"{m['total']:.1f} / {r['hbm_gib_per_device']:g} | {'yes' if r['fits'] else 'no'} | "
            f"{r['flops_per_step'] / 1e12:.0f} | {r['bytes_accessed_gib_per_device']:.0f} | "
            f"{r['step_seconds_at_peak']:.2f} s | {estimate} | {r['compile_seconds']:.0f} s |")


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)  # compile-only executables cannot be read back
    VARIANTS[FLAGS.variant]()
    out = pathlib.Path(FLAGS.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for topology in FLAGS.topologies:
        config = copy.deepcopy(FLAGS.config)
        config.compile.topology = topology
        chips = tpu_slice(topology, int(config.compile.num_slices)).chips
        config.data.batch_size = max(round(FLAGS.batch_per_chip * chips), 1)
        report = compile_report(config)
        (out / f"{topology.replace(':', '_')}.json").write_text(json.dumps(report, indent=2))
        rows.append(table_row(report))
        print(rows[-1], flush=True)
    print("\n".join([HEADER, *rows]))


if __name__ == "__main__":
    app.run(main)
