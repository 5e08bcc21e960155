"""Steps versus quality on the committed demo checkpoint: the README "Samplers" table.

    python benchmarks/sampler_quality.py [--config=configs/demo.py] [--samplers=ddim,dpmpp_2m] \
        [--steps=4,8,12,16,24,32] [--per_prompt=8] [--out=workdir/sampler_quality]

Samples the config's held-out prompts --per_prompt times with every sampler at every step count
(the config's guidance scale, thresholding and seed: the same starting noise for every row), scores
them with the moving-shapes evaluator, writes OUT/report.json and prints a markdown table. Seconds
per clip are the base stage's wall time over the clips, model build and compile included.
"""
import copy
import json
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data_pipelines.synthetic import caption, parse_heldout  # noqa: E402
from lumiere_jax.diffusion import guidance_branches  # noqa: E402
from lumiere_jax.evaluation.job import evaluate_samples  # noqa: E402
from lumiere_jax.sample.job import sample  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/demo.py", "A config with sample.base_checkpoint and eval.heldout.")
flags.DEFINE_list("samplers", ["ddim", "dpmpp_2m"], "Samplers to compare (sample.sampler values).")
flags.DEFINE_list("steps", ["4", "8", "12", "16", "24", "32"], "Step counts (sample.num_steps values).")
flags.DEFINE_integer("per_prompt", 8, "Samples per held-out prompt.")
flags.DEFINE_string("out", "workdir/sampler_quality", "Directory for the samples and report.json.")
FLAGS = flags.FLAGS

METRICS = ("color_accuracy", "presence_rate", "direction_accuracy")
HEADER = ("| sampler | steps | model evaluations per clip | colour | presence | direction | seconds per clip |\n"
          "|---|---|---|---|---|---|---|")


def measure(config, sampler: str, steps: int, out: pathlib.Path) -> dict:
    """One row: the held-out prompts sampled with (sampler, steps) and scored."""
    cfg = copy.deepcopy(config)
    cfg.sample.update(sampler=sampler, num_steps=steps)
    directory = out / f"{sampler}_{steps}"
    report = sample(cfg, directory)
    held = evaluate_samples(directory, progress=False, heldout=cfg.eval.heldout)["heldout"]
    clips = len(report["samples"])
    calls = steps * guidance_branches(cfg.sample.guidance_scale)
    return {"sampler": sampler, "steps": steps, "model_evaluations_per_clip": calls, "num_clips": clips,
            **{m: held[m] for m in METRICS}, "seconds_per_clip": report["timings"]["base_seconds"] / clips}


def table_row(r: dict) -> str:
    scores = " | ".join(f"{r[m]:.0%}" for m in METRICS)
    return (f"| {r['sampler']} | {r['steps']} | {r['model_evaluations_per_clip']} | {scores} | "
            f"{r['seconds_per_clip']:.2f} |")


def main(argv):
    del argv
    config = FLAGS.config
    if not config.eval.heldout:
        raise ValueError("config.eval.heldout is empty: the benchmark scores held-out prompts")
    config.sample.prompts = [caption(*c) for c in parse_heldout(config.eval.heldout)] * FLAGS.per_prompt
    config.sample.prompts_file = ""
    out = pathlib.Path(FLAGS.out)
    rows = []
    for sampler in FLAGS.samplers:
        for steps in FLAGS.steps:
            rows.append(measure(config, sampler, int(steps), out))
            print(table_row(rows[-1]), file=sys.stderr, flush=True)
    s = config.sample
    setup = {"base_checkpoint": s.base_checkpoint, "guidance_scale": s.guidance_scale, "seed": s.seed,
             "threshold_percentile": s.threshold_percentile, "heldout": config.eval.heldout,
             "per_prompt": FLAGS.per_prompt}
    (out / "report.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    print(HEADER)
    print("\n".join(table_row(r) for r in rows))


if __name__ == "__main__":
    app.run(main)
