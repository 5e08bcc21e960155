"""Scores the demo checkpoint and writes its provenance JSON (last step of build_demo_checkpoint.sh).

    python scripts/evaluate_demo_checkpoint.py [--config=configs/demo.py] [--per_prompt=8] [--num_seen=12]

Samples the config's held-out prompts --per_prompt times and --num_seen seen combinations twice each
with the STUNet, then the held-out prompts again with every temporal module bypassed (frames generated
independently: the frame-wise baseline, which should fail on direction), scores all of it with the
moving-shapes evaluator and records the scores beside the training run's command, steps, wall time,
hardware and final loss.
"""
import copy
import json
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from checkpoint_card import run_card  # noqa: E402  (scripts/ is this script's path)
from configs.demo import TARGETS
from data_pipelines.synthetic import caption, parse_heldout, seen_prompts
from lumiere_jax.evaluation.job import evaluate_samples, summary
from lumiere_jax.sample.job import sample

config_flags.DEFINE_config_file("config", "configs/demo.py", "The demo config the checkpoint was trained with.")
flags.DEFINE_string("run_dir", "workdir/demo/run", "The training run's --workdir (train_summary.json).")
flags.DEFINE_string("out_dir", "workdir/demo/eval", "Where the scored samples go.")
flags.DEFINE_string("card", "demo/checkpoint/provenance.json", "The JSON written next to the checkpoint.")
flags.DEFINE_integer("per_prompt", 8, "Samples per held-out prompt.")
flags.DEFINE_integer("num_seen", 12, "Seen (trained-on) combinations sampled twice each, for comparison.")
flags.DEFINE_string("train_command", "", "The exact training command, as run.")
FLAGS = flags.FLAGS


def sample_and_score(config, prompts: list[str], directory: pathlib.Path, image_mode: bool) -> dict:
    cfg = copy.deepcopy(config)
    cfg.sample.prompts, cfg.sample.prompts_file, cfg.sample.image_mode = prompts, "", image_mode
    sample(cfg, directory)
    report = evaluate_samples(directory, heldout=config.eval.heldout)
    print(summary(report), file=sys.stderr)
    return {k: report[k] for k in ("overall", "heldout", "seen", "per_combination") if report.get(k)}


def main(argv):
    del argv
    config = FLAGS.config
    out = pathlib.Path(FLAGS.out_dir)
    heldout = [caption(*combo) for combo in parse_heldout(config.eval.heldout)]
    stunet = sample_and_score(config, heldout * FLAGS.per_prompt + seen_prompts(config.eval.heldout, FLAGS.num_seen) * 2,
                              out / "stunet", image_mode=False)
    framewise = sample_and_score(config, heldout * FLAGS.per_prompt, out / "framewise", image_mode=True)
    card = {
        **run_card(config, FLAGS.run_dir, FLAGS.train_command, "configs/demo.py"),
        "heldout_combinations": config.eval.heldout,
        "targets_on_heldout": TARGETS,
        "scores": {"stunet": stunet, "framewise_temporal_bypassed": framewise},
    }
    pathlib.Path(FLAGS.card).write_text(json.dumps(card, indent=2))
    print(f"wrote {FLAGS.card}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
