"""Scoring generated clips: the synthetic moving-shapes evaluator (`--mode=eval`)."""
from lumiere_jax.evaluation.job import evaluate_samples, summary
from lumiere_jax.evaluation.synthetic import analyze_clip, evaluate_clips, parse_prompt

__all__ = ["analyze_clip", "evaluate_clips", "evaluate_samples", "parse_prompt", "summary"]
