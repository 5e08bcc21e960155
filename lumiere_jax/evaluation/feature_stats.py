"""Feature statistics for the Fréchet distance: accumulated batch by batch, saved with what made them.

FVD on 10,000 videos needs only the mean and covariance of their features, so the features never
sit in memory: each batch is merged into a running (count, mean, sum of squared deviations) in
float64 (Chan et al.'s pairwise update, which stays exact where raw sums of squares lose digits
to cancellation). A reference set's statistics are expensive (UCF101 through I3D), so they are
saved to `.npz` with what they were computed from (network, weights hash, feature, N, frames,
resolution); loading them for a comparison that differs in any of these is refused, because an
FVD between statistics of different networks, clip lengths or sample counts is meaningless.
"""
from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Optional

import numpy as np

META_KEY = "meta_json"


class StatsMismatch(ValueError):
    """Saved statistics were computed differently from what this comparison needs."""


class FeatureStats:
    """Streaming mean and covariance of (N, D) features."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros((dim, dim), np.float64)  # sum of outer products of deviations from the mean

    @classmethod
    def of(cls, features) -> "FeatureStats":
        """The statistics of one (N, D) array."""
        stats = cls(np.shape(features)[1])
        stats.update(features)
        return stats

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def update(self, features) -> None:
        """Merges a batch (B, D) into the running statistics."""
        batch = np.asarray(features, np.float64)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise ValueError(f"features must be (batch, {self.dim}), got {batch.shape}")
        if not np.all(np.isfinite(batch)):
            raise ValueError("features hold NaN or infinite values: the network's input or weights are broken")
        n = batch.shape[0]
        if n == 0:
            return
        batch_mean = batch.mean(axis=0)
        centred = batch - batch_mean
        delta = batch_mean - self.mean
        total = self.count + n
        self.m2 += centred.T @ centred + np.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    @property
    def covariance(self) -> np.ndarray:
        """The unbiased covariance (np.cov's rowvar=False convention)."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, have {self.count}")
        return self.m2 / (self.count - 1)


def save_stats(path, stats: FeatureStats, meta: dict) -> None:
    """Writes mean, covariance and `meta` (with N) to an .npz."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "num_samples": stats.count}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, mean=stats.mean, covariance=stats.covariance,
             **{META_KEY: np.array(json.dumps(meta, sort_keys=True))})
    tmp.replace(path)  # a killed run leaves no half-written statistics behind


def load_stats(path, expected: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mean, covariance, meta) of a saved .npz; StatsMismatch naming each key of `expected`
    (e.g. network, weights_sha256, num_frames, num_samples) whose saved value differs."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature statistics {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            mean, covariance = data["mean"], data["covariance"]
            meta = json.loads(str(data[META_KEY]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a feature-statistics .npz written by lumiere_jax "
                         f"({type(e).__name__}: {e}); delete it to recompute") from e
    if mean.ndim != 1 or covariance.shape != (mean.shape[0],) * 2:
        raise ValueError(f"{path}: mean {mean.shape} and covariance {covariance.shape} do not match; delete it")
    differences = [f"{k}: saved {meta.get(k)!r}, wanted {v!r}" for k, v in (expected or {}).items() if meta.get(k) != v]
    if differences:
        raise StatsMismatch(f"{path} was computed differently ({'; '.join(differences)}); use statistics made with "
                            "the same network, weights, feature, frames, resolution and sample count, or delete it "
                            "to recompute")
    return mean, covariance, meta
