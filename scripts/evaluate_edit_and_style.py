"""Scores video editing (SDEdit) and stylized generation on the demo domain and writes the style
checkpoint's provenance JSON (last step of build_style_checkpoint.sh).

    python scripts/evaluate_edit_and_style.py [--per_combo=8] [--edit_per_combo=2] ...

Editing: held-out clips with their caption's colour changed to each other colour (and, at the default
strength, their shape to each other shape), the clip's caption as the negative prompt, sampled through
the sampling job with the demo's edit model (demo.edit_checkpoint) at each strength of STRENGTHS;
scores: the new prompt followed, the direction kept, the object's track distance to the input's.
Style: the held-out prompts sampled with demo/style_checkpoint interpolated at each alpha of ALPHAS;
scores: the background level (the style), direction, presence, colour.
"""
import copy
import json
import pathlib
import sys

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from checkpoint_card import run_card  # noqa: E402  (scripts/ is this script's path)
from configs import demo, demo_style  # noqa: E402
from data_pipelines.synthetic import caption, parse_heldout  # noqa: E402
from lumiere_jax.evaluation.conditional import edit_pairs, heldout_clips, score_edit, write_edit_requests  # noqa: E402
from lumiere_jax.evaluation.job import evaluate_samples  # noqa: E402
from lumiere_jax.sample.job import sample  # noqa: E402

STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
CLIP_FRAMES = demo.get_config().data.num_frames  # the base model's clips (the style trains on stills)
flags.DEFINE_string("run_dir", "workdir/demo_style/run", "The style fine-tune's --workdir (train_summary.json).")
flags.DEFINE_string("out_dir", "workdir/demo_style/eval", "Where the inputs and scored samples go.")
flags.DEFINE_string("card", "demo/style_checkpoint/provenance.json", "The JSON written next to the checkpoint.")
flags.DEFINE_integer("per_combo", 8, "Clips per held-out prompt at the default alpha.")
flags.DEFINE_integer("sweep_per_combo", 4, "Clips per held-out prompt at the other alphas.")
flags.DEFINE_integer("edit_per_combo", 4, "Clips per held-out combination at the default strength (each edited "
                     "to every other colour: 4 edits a clip; to every other shape: 2).")
flags.DEFINE_integer("edit_sweep_per_combo", 1, "Clips per held-out combination at the other strengths.")
flags.DEFINE_string("train_command", "", "The exact training command, as run.")
FLAGS = flags.FLAGS


def rounded(scores: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else rounded(v) if isinstance(v, dict) else v
            for k, v in scores.items()}


def edit(config, change: str, strength: float, count: int, out: pathlib.Path) -> dict:
    pairs = edit_pairs(heldout_clips(config.eval.heldout, count, CLIP_FRAMES, config.data.resolution), change)
    cfg = copy.deepcopy(config)
    tasks_file = write_edit_requests(pairs, out / "inputs", config.sample.fps)
    cfg.sample.update(task="edit", tasks_file=str(tasks_file), strength=strength, prompts=[], prompts_file="",
                      style_checkpoint="", base_checkpoint=config.demo.edit_checkpoint)
    sample(cfg, out)
    scores = rounded(score_edit(out, pairs, change, config.eval.heldout))
    print(f"edit {change} strength {strength}: {json.dumps(scores)}", file=sys.stderr)
    return scores


def style(config, alpha: float, count: int, out: pathlib.Path) -> dict:
    cfg = copy.deepcopy(config)
    prompts = [caption(*combo) for combo in parse_heldout(config.eval.heldout)]
    cfg.sample.update(task="t2v", prompts=prompts * count, prompts_file="", tasks_file="", style_alpha=alpha)
    sample(cfg, out)
    scores = rounded(evaluate_samples(out, heldout=config.eval.heldout)["heldout"])
    print(f"style alpha {alpha}: {json.dumps(scores)}", file=sys.stderr)
    return scores


def edit_targets_met(scores: dict, skip: tuple = ()) -> dict:
    """Each of demo.EDIT_TARGETS met or not (the track distance is a maximum, the rest minimums)."""
    return {k: (scores[k] <= v if k == "track_distance_px" else scores[k] >= v)
            for k, v in demo.EDIT_TARGETS.items() if k not in skip}


def main(argv):
    del argv
    config = demo_style.get_config()
    base = config.sample  # demo/checkpoint with demo.py's sampler; the style checkpoint interpolated on load
    out = pathlib.Path(FLAGS.out_dir)
    default_strength, default_alpha = base.strength, base.style_alpha
    edit_count = lambda s: FLAGS.edit_per_combo if s == default_strength else FLAGS.edit_sweep_per_combo  # noqa: E731
    edits = {f"color_{s}": edit(config, "color", s, edit_count(s), out / f"edit_color_{s}")
             for s in sorted(set(STRENGTHS) | {default_strength})}
    edits[f"shape_{default_strength}"] = edit(config, "shape", default_strength, 2 * FLAGS.edit_per_combo,
                                              out / f"edit_shape_{default_strength}")
    style_count = lambda a: FLAGS.per_combo if a == default_alpha else FLAGS.sweep_per_combo  # noqa: E731
    styles = {str(a): style(config, a, style_count(a), out / f"style_{a}") for a in sorted(set(ALPHAS) | {default_alpha})}
    card = run_card(config, FLAGS.run_dir, FLAGS.train_command, "configs/demo_style.py")
    default_edit, default_style = edits[f"color_{default_strength}"], styles[str(default_alpha)]
    card.update({
        "checkpoint": config.sample.style_checkpoint,
        "style": {"background": list(demo_style.STYLE_BACKGROUND), "images": demo_style.STYLE_IMAGES,
                  "fine_tuned_from": config.train.init_from, "trainable": config.train.trainable},
        "heldout_combinations": config.eval.heldout,
        "edit_checkpoint": config.demo.edit_checkpoint,
        "defaults": {"strength": default_strength, "style_alpha": default_alpha},
        "scores": {"edit": edits, "style": styles},
        "targets": {"edit": demo.EDIT_TARGETS, "style": demo_style.TARGETS},
        "targets_met": {
            "edit": edit_targets_met(default_edit),
            "shape_edit_keeps_motion": edit_targets_met(edits[f"shape_{default_strength}"], ("edit_success",)),
            "style": {k: default_style[k] >= v for k, v in demo_style.TARGETS.items()},
            "style_rises_with_alpha": all(styles[str(a)]["background_level"] < styles[str(b)]["background_level"]
                                          for a, b in zip(ALPHAS, ALPHAS[1:])),
        },
    })
    pathlib.Path(FLAGS.card).write_text(json.dumps(card, indent=2))
    print(json.dumps(card["targets_met"], indent=2), file=sys.stderr)
    print(f"wrote {FLAGS.card}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
