"""Scores the long-clip checkpoint and writes its provenance JSON (last step of build_long_checkpoint.sh).

    python scripts/evaluate_long_checkpoint.py [--config=configs/demo_long.py] [--per_prompt=4]
        [--num_frames=64] [--aggregations=average,taper,shifted,independent] [--overlaps=8,12]

Samples the config's held-out prompts --per_prompt times as --num_frames-frame clips (4x the training
length) for every window aggregation and overlap asked for (`independent`, no aggregation, is the
baseline and needs no overlap), and once at the training length, scores each with the moving-shapes
evaluator on stationary motion (direction, presence, jitter, and the seam ratio: the largest centroid
step across a window boundary over the median step), and records the scores beside the training
run's command, steps, wall time, hardware and final loss. The best aggregation on the issue's targets
is the one to make the default for long base-model clips.
"""
import copy
import json
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from checkpoint_card import run_card  # noqa: E402  (scripts/ is this script's path)
from configs.demo_long import TARGETS
from data_pipelines.synthetic import caption, parse_heldout
from lumiere_jax.evaluation.job import evaluate_samples, summary
from lumiere_jax.sample.job import sample

config_flags.DEFINE_config_file("config", "configs/demo_long.py", "The config the checkpoint was trained with.")
flags.DEFINE_string("run_dir", "workdir/demo_long/run", "The training run's --workdir (train_summary.json).")
flags.DEFINE_string("out_dir", "workdir/demo_long/eval", "Where the scored samples go.")
flags.DEFINE_string("card", "demo/long_checkpoint/provenance.json", "The JSON written next to the checkpoint.")
flags.DEFINE_integer("per_prompt", 4, "Samples per held-out prompt and setting.")
flags.DEFINE_integer("num_frames", 64, "Frames of the long clips.")
flags.DEFINE_list("aggregations", ["average", "taper", "shifted", "independent"], "sample.window_aggregation values.")
flags.DEFINE_list("overlaps", ["8", "12"], "sample.window_overlap values (multiples of the temporal downsampling).")
flags.DEFINE_string("train_command", "", "The exact training command, as run.")
FLAGS = flags.FLAGS


def sample_and_score(config, prompts: list[str], directory: pathlib.Path, num_frames: int, overlap: int,
                     aggregation: str) -> dict:
    cfg = copy.deepcopy(config)
    cfg.sample.prompts, cfg.sample.prompts_file = prompts, ""
    cfg.sample.num_frames, cfg.sample.window_overlap, cfg.sample.window_aggregation = num_frames, overlap, aggregation
    report_json = sample(cfg, directory)
    report = evaluate_samples(directory, heldout=config.eval.heldout, motion=config.eval.motion)
    print(f"{num_frames} frames, overlap {overlap}, {aggregation}:\n{summary(report)}", file=sys.stderr)
    return {"num_frames": num_frames, "overlap": overlap, "aggregation": aggregation,
            "base_seconds": report_json["timings"].get("base_seconds"),
            **{k: report[k] for k in ("overall", "heldout", "per_combination") if report.get(k)}}


def settings() -> list[tuple[int, str]]:
    """(overlap, aggregation) pairs to score: independent windows once (overlap does not apply)."""
    pairs = [(int(o), a) for a in FLAGS.aggregations if a != "independent" for o in FLAGS.overlaps]
    return pairs + ([(0, "independent")] if "independent" in FLAGS.aggregations else [])


def main(argv):
    del argv
    config = FLAGS.config
    out = pathlib.Path(FLAGS.out_dir)
    prompts = [caption(*combo) for combo in parse_heldout(config.eval.heldout)] * FLAGS.per_prompt
    window = config.data.num_frames
    scores = {"training_length": sample_and_score(config, prompts, out / f"{window}", window, 0, "average")}
    for overlap, aggregation in settings():
        scores[f"{aggregation}_overlap{overlap}"] = sample_and_score(
            config, prompts, out / f"{FLAGS.num_frames}_{aggregation}_{overlap}", FLAGS.num_frames, overlap, aggregation)
    card = {
        **run_card(config, FLAGS.run_dir, FLAGS.train_command, "configs/demo_long.py"),
        "heldout_combinations": config.eval.heldout,
        "targets_on_heldout_long_clips": {"num_frames": FLAGS.num_frames, **TARGETS},
        "scores": scores,
    }
    pathlib.Path(FLAGS.card).write_text(json.dumps(card, indent=2))
    print(f"wrote {FLAGS.card}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
