"""The score math of evaluation/scores.py and feature_stats.py against direct computations."""
import numpy as np
import pytest
import scipy.linalg

from lumiere_jax.evaluation.feature_stats import FeatureStats, StatsMismatch, load_stats, save_stats
from lumiere_jax.evaluation.scores import clip_similarity, frechet_distance, inception_score


def _gaussian_features(rng, n, dim, shift=0.0):
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing + shift


def _direct_frechet(a, b):
    """The textbook formula with scipy's general matrix square root (well conditioned here)."""
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


def test_frechet_distance_equals_direct_computation():
    rng = np.random.default_rng(0)
    a, b = _gaussian_features(rng, 500, 16), _gaussian_features(rng, 400, 16, shift=0.3)
    ours = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert ours == pytest.approx(_direct_frechet(a, b), rel=1e-9)


def test_frechet_distance_is_zero_against_itself_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a = _gaussian_features(rng, 300, 8)
    m, c = a.mean(0), np.cov(a, rowvar=False)
    assert abs(frechet_distance(m, c, m, c)) < 1e-9
    distances = [frechet_distance(m, c, m + s, c) for s in (0.1, 0.5, 2.0)]
    assert distances == pytest.approx([8 * s * s for s in (0.1, 0.5, 2.0)], rel=1e-9)  # |Δμ|² exactly


def test_frechet_distance_of_rank_deficient_covariances():
    """N < D (10 clips, 32-d features): Σ is singular; the result is still finite, non-negative
    and 0 against itself up to the square roots of round-off-sized eigenvalues (about 3e-8 each)."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(10, 32)), rng.normal(size=(10, 32)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert abs(frechet_distance(a.mean(0), ca, a.mean(0), ca)) < 1e-6 * np.trace(ca)
    assert frechet_distance(a.mean(0), ca, b.mean(0), cb) > 32 * 0.5


def test_frechet_distance_rejects_mismatched_statistics():
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_statistics_equal_the_batch_computation():
    rng = np.random.default_rng(3)
    features = _gaussian_features(rng, 1000, 12, shift=100.0)  # a large offset tests the numerics
    stats = FeatureStats(12)
    for start, size in zip((0, 1, 8, 300, 301), (1, 7, 292, 1, 699)):
        stats.update(features[start:start + size])
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(FeatureStats.of(features).covariance, stats.covariance, rtol=1e-9, atol=1e-12)


def test_streaming_statistics_reject_bad_batches():
    stats = FeatureStats(4)
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        stats.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="NaN"):
        stats.update(np.full((2, 4), np.nan))
    stats.update(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        stats.covariance


def test_saved_statistics_round_trip_and_refuse_a_different_setup(tmp_path):
    rng = np.random.default_rng(4)
    stats = FeatureStats(6)
    stats.update(rng.normal(size=(20, 6)))
    meta = {"network": "i3d", "weights_sha256": "ab12", "num_frames": 16, "resolution": 224}
    save_stats(tmp_path / "ref.npz", stats, meta)
    mean, cov, saved = load_stats(tmp_path / "ref.npz", {**meta, "num_samples": 20})
    np.testing.assert_array_equal(mean, stats.mean)
    np.testing.assert_array_equal(cov, stats.covariance)
    assert saved["num_samples"] == 20
    with pytest.raises(StatsMismatch, match=r"num_frames: saved 16, wanted 32.*weights_sha256"):
        load_stats(tmp_path / "ref.npz", {"num_frames": 32, "weights_sha256": "ff00"})
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="delete it to recompute"):
        load_stats(tmp_path / "bad.npz")


def test_inception_score_closed_forms():
    # Confident, evenly spread predictions over C classes: IS = C; identical predictions: IS = 1.
    classes, per_class = 5, 4
    confident = np.repeat(np.eye(classes) * 60.0, per_class, axis=0)
    mean, std = inception_score(confident, splits=1)
    assert mean == pytest.approx(classes, rel=1e-6) and std == 0.0
    assert inception_score(np.tile(np.arange(5.0), (20, 1)), splits=2)[0] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_splits_against_a_direct_computation():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(23, 7)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    direct = []
    for part in np.split(probs[:20], 4):
        py = part.mean(0)
        direct.append(np.exp(np.mean([np.sum(p * np.log(p / py)) for p in part])))
    mean, std = inception_score(logits, splits=4)
    assert (mean, std) == pytest.approx((np.mean(direct), np.std(direct)), rel=1e-9)
    with pytest.raises(ValueError, match="one sample per split"):
        inception_score(logits[:3], splits=4)


def test_clip_similarity_is_100_times_mean_frame_cosine_floored_at_zero():
    text = np.array([1.0, 0.0])
    frames = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]])  # cosines 1, 1/√2, 0
    assert clip_similarity(frames, text) == pytest.approx(100 * (1 + 2 ** -0.5) / 3)
    assert clip_similarity(-frames, text) == 0.0
    with pytest.raises(ValueError, match=r"\(T, D\)"):
        clip_similarity(frames, np.ones(3))
