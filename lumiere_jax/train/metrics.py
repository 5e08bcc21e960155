"""Training metrics: a console progress bar and TensorBoard (tensorboardX), written by process 0 only."""
from __future__ import annotations

import pathlib
from typing import Optional

import jax
import numpy as np

# Dense bf16 peak TFLOP/s per chip, matched against jax.Device.device_kind (first match wins).
PEAK_TFLOPS = (
    ("v6", 918.0),  # TPU v6e (Trillium) reports "TPU v6 lite"
    ("v5p", 459.0),
    ("v5 lite", 197.0),  # v5e
    ("v5e", 197.0),
    ("v5", 459.0),  # v5p reports plain "TPU v5"
    ("v4", 275.0),
    ("h200", 989.0),
    ("h100", 989.0),
    ("a100", 312.0),
)


def peak_tflops(device_kind: str, configured: float = 0.0) -> Optional[float]:
    """The per-chip peak for MFU: `configured` if set, else looked up; None when unknown (e.g. CPU)."""
    if configured > 0:
        return configured
    kind = device_kind.lower()
    return next((peak for key, peak in PEAK_TFLOPS if key in kind), None)


class MetricWriter:
    """Averages step metrics over a logging interval and writes them to TensorBoard."""

    def __init__(self, logdir: pathlib.Path):
        self.enabled = jax.process_index() == 0
        self.writer = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(logdir))

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            if value is not None and np.isfinite(value):
                self.writer.add_scalar(name, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def summarize(history: list[dict]) -> dict:
    """Reduces the per-step metric dicts of one logging interval to scalars."""
    loss = [float(m["loss"]) for m in history if bool(m["update_applied"])]
    band_sum = np.sum([m["band_loss_sum"] for m in history], axis=0)
    band_count = np.sum([m["band_count"] for m in history], axis=0)
    out = {
        "train/loss": float(np.mean(loss)) if loss else float("nan"),
        "train/grad_norm": float(np.mean([float(m["grad_norm"]) for m in history])),
        "train/learning_rate": float(history[-1]["learning_rate"]),
        "train/nonfinite_total": float(history[-1]["nonfinite_total"]),
    }
    for i, (s, c) in enumerate(zip(band_sum, band_count)):
        if c:
            out[f"train/loss_band{i}"] = float(s / c)
    return out
