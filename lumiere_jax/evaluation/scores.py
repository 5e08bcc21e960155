"""The field's video scores from network outputs: Fréchet distance (FVD), Inception Score, CLIP similarity.

All of it runs in float64 numpy on statistics or small per-sample arrays; the networks that make
the features live in i3d.py, c3d.py and clip.py.
"""
from __future__ import annotations

import numpy as np


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix, by eigendecomposition
    (eigenvalues clipped at 0: round-off makes the tiny ones of a rank-deficient covariance negative)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean1, cov1, mean2, cov2) -> float:
    """d² between N(mean1, cov1) and N(mean2, cov2): |μ1 − μ2|² + tr Σ1 + tr Σ2 − 2 tr (Σ1 Σ2)^½.

    tr (Σ1 Σ2)^½ is computed as tr (Σ1^½ Σ2 Σ1^½)^½, the same eigenvalues but of a symmetric PSD
    matrix, so only symmetric eigendecompositions are needed: no general matrix square root
    (scipy's `sqrtm` returned wrong roots in 1.11.2-1.12) and no complex parts to discard. With fewer
    samples than feature dimensions the covariances are rank-deficient, which this handles; the
    score then depends strongly on N, which is why reports state it.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != mean1.shape * 2:
        raise ValueError(f"statistics do not match: means {mean1.shape} / {mean2.shape}, covariances "
                         f"{cov1.shape} / {cov2.shape}")
    root1 = _psd_sqrt(cov1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ cov2 @ root1), 0, None)).sum()
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` equal consecutive parts of exp(E_x KL(p(y|x) ‖ p(y))), the usual
    split averaging (Salimans et al.; TGAN and StyleGAN-V use 10 splits on C3D's UCF101 logits).
    Samples beyond a multiple of `splits` are dropped, as in those implementations."""
    probs = softmax(logits)
    if probs.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got {probs.shape}")
    if not isinstance(splits, int) or splits < 1 or probs.shape[0] < splits:
        raise ValueError(f"the Inception Score needs at least one sample per split: {probs.shape[0]} samples, "
                         f"splits={splits!r}")
    per_split = probs.shape[0] // splits
    scores = []
    for part in np.split(probs[: per_split * splits], splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part + 1e-12) - np.log(marginal + 1e-12))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def clip_similarity(frame_embeddings, text_embedding) -> float:
    """100 × the mean over frames of cos(frame embedding, text embedding), floored at 0 as
    torchmetrics' CLIPScore reports it (the CLIPSIM of video papers)."""
    frames = np.asarray(frame_embeddings, np.float64)
    text = np.asarray(text_embedding, np.float64)
    if frames.ndim != 2 or text.shape != frames.shape[1:]:
        raise ValueError(f"frame embeddings must be (T, D) and the text embedding (D,), got {frames.shape} "
                         f"and {text.shape}")
    cosines = frames @ text / (np.linalg.norm(frames, axis=1) * np.linalg.norm(text))
    return float(max(100.0 * cosines.mean(), 0.0))
