"""`--mode=eval` with eval.metrics clip and is on small random networks, checked against direct
computations (transformers' CLIP for the similarity; the C3D itself is proven in test_eval_c3d)."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lumiere_jax.evaluation import c3d
from lumiere_jax.evaluation.clip import preprocess_for_clip
from lumiere_jax.evaluation.job import evaluate
from lumiere_jax.evaluation.scores import inception_score
from metrics_helpers import IMAGE_SIZE, MAX_LENGTH, chainer_arrays, hf_model, hf_tokenizer, raw_mean, write_checkpoint
from metrics_helpers import SMALL_C3D
from train_helpers import train_config

PROMPTS = ["a photo of the cat", "the dog", "a cat and a dog"]


def _sampling_run(directory, frames: int, count: int, size: int = 24, seed: int = 0):
    """A WORKDIR as --mode=sample leaves it: samples.json and one .npz of uint8 frames per clip."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        np.savez(directory / f"clip{i}.npz", frames=rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8))
        samples.append({"prompt": PROMPTS[i % len(PROMPTS)], "npz": f"clip{i}.npz"})
    (directory / "samples.json").write_text(json.dumps({"samples": samples}))
    return directory


def _frames(directory, i):
    with np.load(directory / f"clip{i}.npz") as data:
        return data["frames"].astype(np.float32) / 255.0


def test_clip_similarity_of_a_sampling_run_matches_transformers(tmp_path):
    tokenizer = hf_tokenizer()
    model = hf_model(tokenizer.eos_token_id, "quick_gelu", seed=3)
    checkpoint = write_checkpoint(tmp_path / "clip", model, tokenizer)
    run = _sampling_run(tmp_path / "run", frames=6, count=5)
    config = train_config()
    config.eval.update(metrics="clip", clip_model=str(checkpoint), num_frames=4, batch_size=2)
    report, table = evaluate(config, run, progress=False)

    expected = []
    for i in range(5):  # the first 4 frames of each clip against its prompt, in transformers
        pixels = np.asarray(preprocess_for_clip(jnp.asarray(_frames(run, i)[:4]), IMAGE_SIZE))
        ids = tokenizer([PROMPTS[i % 3]], padding="max_length", max_length=MAX_LENGTH, truncation=True)["input_ids"]
        with torch.no_grad():
            image = model.get_image_features(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()))
            text = model.get_text_features(input_ids=torch.tensor(ids))
        image, text = getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)
        cosine = torch.nn.functional.cosine_similarity(image.double(), text.double(), dim=-1)
        expected.append(max(100 * cosine.mean().item(), 0.0))
    clip = report["metrics"]["clip"]
    assert clip["num_samples"] == 5 and clip["num_frames"] == 4
    assert clip["clip_similarity"] == pytest.approx(np.mean(expected), rel=1e-4)
    assert "CLIP similarity" in table
    assert json.loads((run / "eval_report.json").read_text())["metrics"]["clip"]["clip_similarity"] == pytest.approx(
        clip["clip_similarity"])


def test_inception_score_of_a_sampling_run_skips_short_clips(tmp_path):
    weights, mean_path = tmp_path / "c3d.npz", tmp_path / "mean2.npz"
    np.savez(weights, **chainer_arrays(SMALL_C3D, seed=4))
    np.savez(mean_path, mean=raw_mean())
    run = _sampling_run(tmp_path / "run", frames=16, count=7, size=40)
    np.savez(run / "clip6.npz", frames=np.zeros((8, 40, 40, 3), np.uint8))  # too short for C3D's 16 frames
    config = train_config()
    config.eval.update(metrics="is", c3d_weights=str(weights), c3d_mean=str(mean_path), is_splits=2, batch_size=4)
    report, table = evaluate(config, run, progress=False)

    network, mean = c3d.load_c3d(weights, mean_path)
    logits = np.asarray(network(c3d.preprocess_for_c3d(jnp.asarray(np.stack([_frames(run, i) for i in range(6)])),
                                                       mean)))
    score = report["metrics"]["is"]
    assert (score["num_samples"], score["splits"], score["num_frames"]) == (6, 2, 16)
    assert score["inception_score"] > 1.01  # 3 samples per split with different predictions
    assert (score["inception_score"], score["std"]) == pytest.approx(inception_score(logits, 2), rel=1e-4)
    assert [s["name"] for s in report["skipped_samples"]] == ["clip6.npz"]
    assert "fewer than eval.num_frames=16" in report["skipped_samples"][0]["reason"] and "skipped 1" in table
