"""The synthetic-video evaluator: right on the data's own clips, no better than chance on noise,
"static" on still clips, jumpy on independent frames, and `--mode=eval` end to end."""
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines.synthetic import COLORS, DIRECTIONS, SHAPES, caption, make_example, render
from lumiere_jax.evaluation import analyze_clip, evaluate_clips, evaluate_samples, parse_prompt, summary
from lumiere_jax.evaluation import validate
from lumiere_jax.evaluation.synthetic import MIN_TRAVEL, find_object, fit_direction, track_jitter

CHANCE = {"color_accuracy": 1 / len(COLORS), "shape_accuracy": 1 / len(SHAPES),
          "direction_accuracy": 1 / len(DIRECTIONS)}


def as_uint8(clips01):
    return np.round(clips01 * 255).astype(np.uint8)


def balanced_prompts(n):
    """n prompts cycling through every (colour, shape, direction), so a constant guess scores chance."""
    combos = itertools.cycle(itertools.product(COLORS, SHAPES, DIRECTIONS))
    return [caption(*next(combos)) for _ in range(n)]


REAL32_SETTINGS = {"seed": 1, "split": "train", "kind": "video", "heldout": [], "num_frames": 16, "sizes": [32],
                   "fps": 16.0}


@pytest.fixture(scope="module")
def real32():
    """20 clips of 16 frames at 32x32 (the demo's size) covering every colour, shape and direction."""
    clips, prompts, positions = validate.real_clips(20, 32, seed=REAL32_SETTINGS["seed"])
    targets = [parse_prompt(p) for p in prompts]
    for what, values in (("color", COLORS), ("shape", SHAPES), ("direction", DIRECTIONS)):
        assert {getattr(t, what) for t in targets} == set(values)
    return as_uint8(clips), prompts, positions


@pytest.fixture(scope="module")
def real32_report(real32):
    return evaluate_clips(real32[0], real32[1], progress=False)


def test_real_clips_score_perfectly(real32, real32_report):
    clips, prompts, positions = real32
    report = real32_report
    overall = report["overall"]
    assert overall["num_clips"] == 20
    for metric in ("color_accuracy", "shape_accuracy", "direction_accuracy", "presence_rate"):
        assert overall[metric] == 1.0, metric
    assert overall["trajectory_jitter"] < 0.02  # pixel quantisation only (~0.35 px at 32x32)
    centroids = np.array([r["centroids"] for r in report["clips"]])
    # Exactly the mean of the drawn pixel centres, and close to the data's true centres.
    bright = clips.max(-1) > 0
    ys, xs = np.mgrid[0:32, 0:32] + 0.5
    drawn = np.stack([(bright * xs).sum((-2, -1)), (bright * ys).sum((-2, -1))], -1) / bright.sum((-2, -1))[..., None]
    np.testing.assert_allclose(centroids, drawn / 32, atol=1e-5)
    assert np.hypot(*(centroids - positions).transpose(2, 0, 1)).mean() * 32 < 0.25
    # The shape fit recovers the data's radius (one per clip) and sees no blur.
    radii = np.array([make_example(i, REAL32_SETTINGS).meta["radius"] for i in range(20)])
    fits = [r["shape_fit"] for r in report["clips"]]
    assert np.abs(np.array([f["radius"] for f in fits]) / radii - 1).mean() < 0.05
    assert all(f["blur"] == 0.0 for f in fits) and overall["shape_fit"] > 0.9
    assert set(report["per_combination"]) == {parse_prompt(p).key for p in prompts}
    assert sum(s["num_clips"] for s in report["per_combination"].values()) == 20
    json.dumps(report)


@pytest.mark.parametrize("size, condition, min_shape", [
    (16, "clean", 0.9),
    (32, "noise+blur", 1.0),
    (32, "soft", 0.9),
    (64, "soft", 0.9),
])
def test_degraded_real_clips(size, condition, min_shape):
    """Gaussian noise (0.1), blur (0.02 frame widths) and generator-like soft edges: the shape
    classifier holds up, colour, direction and presence stay (near) perfect."""
    clips, prompts = validate.condition_clips(condition, 12 if size == 64 else 18, size, seed=1)
    report = evaluate_clips(clips, prompts, progress=False)
    overall = report["overall"]
    assert overall["shape_accuracy"] >= min_shape
    if condition == "soft":  # the fit finds the blur the clips were given
        assert np.median([r["shape_fit"]["blur"] for r in report["clips"]]) == validate.CONDITIONS["soft"]["blur"]
    assert overall["color_accuracy"] == 1.0 and overall["direction_accuracy"] == 1.0
    assert overall["presence_rate"] >= 0.98


@pytest.mark.parametrize("noise", ["uniform", "gaussian", "speckle"])
def test_noise_scores_no_better_than_chance(noise):
    rng = np.random.default_rng(0)
    shape = (20, 16, 32, 32, 3)
    clips = {"uniform": lambda: rng.integers(0, 256, shape, dtype=np.uint8),
             "gaussian": lambda: np.clip(rng.normal(0.0, 1.0, shape), -1, 1).astype(np.float32),
             "speckle": lambda: np.clip(-1.0 + rng.normal(0.0, 0.3, shape), -1, 1).astype(np.float32)}[noise]()
    report = evaluate_clips(clips, balanced_prompts(20), progress=False)
    overall = report["overall"]
    assert overall["presence_rate"] <= 0.02
    for metric, chance in CHANCE.items():
        assert overall[metric] <= chance, metric


def test_static_clips_are_static(real32):
    clips, prompts, _ = real32
    still = np.repeat(clips[:6, :1], 16, axis=1)
    report = evaluate_clips(still, prompts[:6], progress=False)
    assert report["overall"]["direction_accuracy"] == 0.0
    assert report["overall"]["color_accuracy"] == 1.0 and report["overall"]["shape_accuracy"] == 1.0
    for record in report["clips"]:
        assert record["direction"] == "static" and record["travel"] == [0.0, 0.0] and record["jitter"] == 0.0


def test_independent_frames_lose_direction_and_smoothness(real32_report):
    """The temporal-bypass failure: the right object in every frame, at unrelated places."""
    rng = np.random.default_rng(0)
    clips, prompts = [], []
    for i in range(16):
        meta = make_example(i, REAL32_SETTINGS).meta
        positions = rng.uniform(meta["radius"], 1 - meta["radius"], (16, 2))
        clips.append(render((meta["color"], meta["shape"], meta["direction"]), positions, meta["radius"], 32))
        prompts.append(caption(meta["color"], meta["shape"], meta["direction"]))
    overall = evaluate_clips(np.stack(clips), prompts, progress=False)["overall"]
    moving = real32_report["overall"]
    assert overall["color_accuracy"] == 1.0 and overall["presence_rate"] == 1.0
    assert overall["direction_accuracy"] <= 0.5
    assert overall["trajectory_jitter"] > 10 * moving["trajectory_jitter"]


def test_direction_and_jitter_closed_form():
    times = np.array([0, 1, 2, 4, 5, 9, 15], float)  # gaps: frames without the object
    start, velocity = np.array([0.7, 0.4]), np.array([-0.02, 0.003])
    direction, travel = fit_direction(times, start + times[:, None] * velocity, 16)
    assert direction == "left"
    np.testing.assert_allclose(travel, 15 * velocity, rtol=1e-9)
    assert fit_direction(times, start + times[:, None] * velocity / 60, 16)[0] == "static"  # 0.005 < MIN_TRAVEL
    assert 0.01 < MIN_TRAVEL < 0.21  # below the data's shortest path (0.3 of 0.7 of the frame)
    accel = np.array([0.001, -0.002])
    steps = np.arange(8)
    quadratic = start + 0.5 * steps[:, None] ** 2 * accel  # second difference: accel, every frame
    assert track_jitter(steps, quadratic) == pytest.approx(np.hypot(*accel), rel=1e-9)
    assert track_jitter(np.array([0, 1, 3, 4]), quadratic[:4]) is None  # no three consecutive frames


def test_presence_needs_one_object_of_the_domains_size():
    def present(frame):
        found = find_object(frame)
        return found is not None and found.present

    frame = np.zeros((32, 32, 3), np.float32)
    frame[10:14, 10:14, 0] = 1.0  # a 4x4 red square: the domain's size
    assert present(frame)
    two = frame.copy()
    two[20:24, 20:24, 2] = 1.0  # a second object as big as the first: clutter
    assert not present(two)
    dot = np.zeros_like(frame)
    dot[5, 5] = 1.0  # one pixel: too small
    assert not present(dot)
    big = np.zeros_like(frame)
    big[4:24, 4:24] = 1.0  # 40% of the frame: too big
    assert not present(big)
    big[:, :] = 1.0  # all of it: no background to stand out from
    assert not present(big)
    assert find_object(np.zeros_like(frame)) is None


def test_a_faint_region_among_brighter_background_stays_on_the_frame():
    """Weights below the background level are negative: a faint bright patch at the border ringed by
    darker pixels once put the centroid outside the frame, and the shape fit's crop then crashed."""
    frame = np.full((32, 32, 3), 0.45, np.float32)
    frame[10:13, 0:2] = 0.6  # just above the foreground threshold, at the left border
    frame[9:14, 2] = 0.3  # a darker ring on its right, inside the region's grown margin
    found = find_object(frame)
    assert found is not None and 0 <= found.centroid[0] < 32 and 0 <= found.centroid[1] < 32
    analyze_clip(np.stack([frame, frame, frame]))  # scores without crashing


def test_float_and_uint8_clips_score_alike(real32):
    clips, prompts, _ = real32
    as_uint = evaluate_clips(clips[:3], prompts[:3], progress=False)
    as_float = evaluate_clips(clips[:3].astype(np.float32) / 127.5 - 1.0, prompts[:3], progress=False)
    assert as_float["clips"] == as_uint["clips"]


@pytest.mark.parametrize("clips, prompts, message", [
    (np.zeros((1, 4, 32, 32), np.uint8), ["a red circle moving left"], "(N, T, H, W, 3)"),
    (np.zeros((1, 4, 32, 16, 3), np.uint8), ["a red circle moving left"], "square frames"),
    (np.zeros((1, 1, 32, 32, 3), np.uint8), ["a red circle moving left"], "at least 2 frames"),
    (np.zeros((1, 4, 32, 32, 3), np.int16), ["a red circle moving left"], "dtype int16"),
    (np.full((1, 4, 32, 32, 3), 2.0), ["a red circle moving left"], "[-1, 1]"),
    (np.full((1, 4, 32, 32, 3), np.nan), ["a red circle moving left"], "NaN"),
    (np.zeros((2, 4, 32, 32, 3), np.uint8), ["a red circle moving left"], "2 clips but 1 prompts"),
    (np.zeros((1, 4, 32, 32, 3), np.uint8), ["a purple circle moving left"], "colour 'purple'"),
    (np.zeros((1, 4, 32, 32, 3), np.uint8), ["a red circle moving sideways"], "direction 'sideways'"),
    (np.zeros((1, 4, 32, 32, 3), np.uint8), ["a red circle"], "is not of the form"),
])
def test_bad_inputs_are_named(clips, prompts, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_clips(clips, prompts, progress=False)


def write_samples(workdir, real32):
    """A sampling run's files: 4 real clips, 1 noise clip and 4 bad entries, paths relative as the
    sampling job writes them for a relative --workdir."""
    clips, prompts, _ = real32
    workdir.mkdir()
    entries = []
    for i in range(4):
        np.savez_compressed(workdir / f"{i:03d}.npz", frames=clips[i])
        entries.append({"prompt": prompts[i], "npz": f"elsewhere/{workdir.name}/{i:03d}.npz"})
    noise = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    np.savez_compressed(workdir / "noise.npz", frames=noise)
    entries.append({"prompt": "a red circle moving left", "npz": str(workdir / "noise.npz")})
    (workdir / "corrupt.npz").write_bytes(b"not a zip")
    np.savez_compressed(workdir / "flat.npz", frames=clips[0, 0])
    entries += [{"prompt": prompts[0], "npz": str(workdir / "corrupt.npz")},
                {"prompt": prompts[0], "npz": str(workdir / "missing.npz")},
                {"prompt": prompts[0], "npz": str(workdir / "flat.npz")},
                {"prompt": "a dog running", "npz": str(workdir / "000.npz")}]
    (workdir / "samples.json").write_text(json.dumps({"samples": entries, "settings": {}}))


def run_main(repo_root, workdir):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "lumiere_jax.main", "--config=configs/stunet_tiny.py",
                           f"--workdir={workdir}", "--mode=eval"], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=300)


def test_eval_mode_end_to_end(repo_root, tmp_path, real32):
    workdir = tmp_path / "run"
    write_samples(workdir, real32)
    proc = run_main(repo_root, workdir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((workdir / "eval_report.json").read_text())
    assert report["overall"]["num_clips"] == 5
    assert report["overall"]["color_accuracy"] == report["overall"]["direction_accuracy"] == 0.8  # noise: wrong
    assert report["overall"]["presence_rate"] == 0.8
    reasons = {s["index"]: s["reason"] for s in report["skipped"]}
    assert sorted(reasons) == [5, 6, 7, 8]
    assert "not an .npz" in reasons[5] and "does not exist" in reasons[6]
    assert "(T, H, W, 3)" in reasons[7] and "is not of the form" in reasons[8]
    assert [c["index"] for c in report["clips"]] == [0, 1, 2, 3, 4]
    assert report["clips"][4]["presence"] == 0.0 and report["clips"][4]["color"] is None
    assert "overall" in proc.stdout and "skipped 4 samples" in proc.stdout
    assert str(workdir / "eval_report.json") in proc.stderr
    assert report == evaluate_samples(workdir, progress=False)
    assert summary(report).splitlines()[1].split()[:2] == ["overall", "5"]


def test_eval_mode_errors(repo_root, tmp_path):
    proc = run_main(repo_root, tmp_path / "nothing")
    assert proc.returncode == 2 and "missing file" in proc.stderr and "--mode=sample" in proc.stderr
    (tmp_path / "samples.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a samples.json"):
        evaluate_samples(tmp_path, progress=False)
    (tmp_path / "samples.json").write_text(json.dumps({"samples": [{"prompt": "a dog", "npz": "x.npz"}]}))
    with pytest.raises(ValueError, match="none of the 1 samples"):
        evaluate_samples(tmp_path, progress=False)
    assert not (tmp_path / "eval_report.json").exists()


def test_validate_cli_writes_table(tmp_path):
    out = tmp_path / "table.json"
    assert validate.main(["--sizes", "16", "--clips", "3", "--conditions", "clean,soft", "--output", str(out)]) == 0
    table = json.loads(out.read_text())
    assert set(table) == {"16"} and set(table["16"]) == {"clean", "soft"}
    assert table["16"]["clean"]["num_clips"] == 3
    with pytest.raises(SystemExit):
        validate.main(["--conditions", "fog"])


def test_prompts_parse_like_the_data_captions():
    every = itertools.product(COLORS, SHAPES, DIRECTIONS)
    assert all(parse_prompt(caption(*c)).key == ":".join(c) for c in every)
    assert parse_prompt("  A Red  circle moving LEFT ").key == "red:circle:left"


def test_heldout_and_seen_combinations_are_scored_apart(real32):
    clips, prompts, _ = (x[:8] for x in real32)
    keys = [parse_prompt(p).key for p in prompts]
    report = evaluate_clips(clips, prompts, progress=False, heldout=f"{keys[0]},{keys[3]}")
    held = [k in (keys[0], keys[3]) for k in keys]
    assert [c["heldout"] for c in report["clips"]] == held
    assert report["heldout"]["num_clips"] == sum(held) and report["seen"]["num_clips"] == 8 - sum(held)
    assert report["heldout"]["direction_accuracy"] == report["seen"]["direction_accuracy"] == 1.0
    assert [line.split()[0] for line in summary(report).splitlines()[1:4]] == ["overall", "heldout", "seen"]
    direction = parse_prompt(prompts[1]).direction
    wildcard = evaluate_clips(clips, prompts, progress=False, heldout=f"*:*:{direction}")
    assert wildcard["heldout"]["num_clips"] == sum(parse_prompt(p).direction == direction for p in prompts)
    assert "heldout" not in evaluate_clips(clips[:1], prompts[:1], progress=False)
    with pytest.raises(ValueError, match="must be color:shape:direction"):
        evaluate_clips(clips, prompts, progress=False, heldout="red:circle")
