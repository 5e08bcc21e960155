"""The conditional fine-tuning's random ⟨C, M⟩ per example, drawn inside the jitted train step.

Each example of a batch draws one kind of condition with the probabilities of `config.train.masks`
(`MASK_KINDS`), so one model learns every task of Lumiere section 4 and, with "none", keeps plain
text-to-video:

  none          nothing known (M = 0): text-to-video;
  first_frames  the first 1..max_first_frames frames known: image-to-video;
  box           a random box to fill, over every frame or (span_prob) over a random span of frames;
  blob          a free-form region (thresholded sum of random Gaussian bumps), over frames like box;
  border        random border widths on each side to fill, the inside known: outpainting;
  cinemagraph   the first frame frozen outside a random box and known there, the clip's own motion
                inside the box, which is generated: the target clip itself is the composite.

Randomness is `fold_in(step rng)`, so a resumed run draws the same masks; the shapes come from
`lumiere_jax.sample.masks`, the module the sampling tasks build their inputs with.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lumiere_jax.sample import masks

MASK_KINDS = ("none", "first_frames", "box", "blob", "border", "cinemagraph")
BLOB_BUMPS = 4  # Gaussian bumps summed into a free-form region


def mix_probabilities(cfg) -> jax.Array:
    """The kinds' probabilities from `config.train.masks` (weights, normalised); errors name bad values."""
    weights = [float(cfg[kind]) for kind in MASK_KINDS]
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"train.masks weights {dict(zip(MASK_KINDS, weights))} must be >= 0 with a positive sum")
    lo, hi = cfg.box_size
    checks = [
        (cfg.max_first_frames >= 1, f"train.masks.max_first_frames={cfg.max_first_frames} must be >= 1"),
        (0 < lo <= hi <= 1, f"train.masks.box_size={tuple(cfg.box_size)} must satisfy 0 < min <= max <= 1"),
        (0 <= cfg.span_prob <= 1, f"train.masks.span_prob={cfg.span_prob} must be in [0, 1]"),
        (0 < cfg.max_border < 0.5, f"train.masks.max_border={cfg.max_border} must be in (0, 0.5)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    total = sum(weights)
    return jnp.array([w / total for w in weights], jnp.float32)


def _random_box(rng, height: int, width: int, size_range) -> jax.Array:
    size_rng, pos_rng = jax.random.split(rng)
    sides = jax.random.uniform(size_rng, (2,), minval=size_range[0], maxval=size_range[1]) * jnp.array([width, height])
    corner = jax.random.uniform(pos_rng, (2,)) * (jnp.array([width, height]) - sides)
    return masks.box_region(height, width, corner[0], corner[1], corner[0] + sides[0], corner[1] + sides[1])


def _random_blob(rng, height: int, width: int, size_range) -> jax.Array:
    centre_rng, scale_rng = jax.random.split(rng)
    centres = jax.random.uniform(centre_rng, (BLOB_BUMPS, 2)) * jnp.array([width, height])
    scales = jax.random.uniform(scale_rng, (BLOB_BUMPS,), minval=size_range[0], maxval=size_range[1]) * min(height, width) / 3
    ys, xs = jnp.mgrid[0:height, 0:width] + 0.5
    d2 = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    field = jnp.exp(-d2 / (2 * scales[:, None, None] ** 2)).sum(0)
    return (field > 0.5).astype(jnp.float32)


def _random_span(rng, num_frames: int, span_prob: float) -> jax.Array:
    """Every frame, or with probability span_prob a random span of at least a quarter of the clip."""
    use_rng, start_rng, len_rng = jax.random.split(rng, 3)
    length = jax.random.randint(len_rng, (), max(1, num_frames // 4), num_frames + 1)
    start = jax.random.randint(start_rng, (), 0, num_frames - length + 1)
    partial = masks.frame_span(num_frames, start, start + length)
    return jnp.where(jax.random.uniform(use_rng) < span_prob, partial, jnp.ones((num_frames,)))


def draw_example(rng, video: jax.Array, probs: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
    """One example's (target clip, known mask (T, H, W)) for a clip (T, H, W, 3)."""
    t, h, w, _ = video.shape
    keys = jax.random.split(rng, 8)
    kind = jax.random.choice(keys[0], len(MASK_KINDS), p=probs)
    count = jax.random.randint(keys[1], (), 1, cfg.max_first_frames + 1)
    borders = jax.random.uniform(keys[2], (4,), maxval=cfg.max_border) * jnp.array([h, w, h, w])
    # At least a pixel on one side, so an outpainting example always has something to generate.
    borders = borders.at[jnp.argmax(borders)].max(1.0)
    region = _random_box(keys[3], h, w, cfg.box_size)
    still_region = _random_box(keys[6], h, w, (max(cfg.box_size[0], 0.3), 1.0))
    candidates = jnp.stack([
        jnp.zeros((t, h, w)),
        masks.first_frames(t, h, w, count),
        masks.fill_region(region, _random_span(keys[4], t, cfg.span_prob)),
        masks.fill_region(_random_blob(keys[5], h, w, cfg.box_size), _random_span(keys[7], t, cfg.span_prob)),
        masks.keep_inside(t, h, w, *borders),
        masks.cinemagraph(video[0], still_region, t)[1],
    ])
    target = jnp.where(kind == MASK_KINDS.index("cinemagraph"), masks.cinemagraph_target(video, still_region), video)
    return target, candidates[kind]


def draw_conditions(rng, videos: jax.Array, cfg) -> tuple[jax.Array, jax.Array]:
    """A batch (B, T, H, W, 3) -> (target clips, known input ⟨C, M⟩ (B, T, H, W, 4)), one draw per example."""
    probs = mix_probabilities(cfg)
    rngs = jax.random.split(rng, videos.shape[0])
    targets, known = jax.vmap(lambda r, v: draw_example(r, v, probs, cfg))(rngs, videos.astype(jnp.float32))
    return targets, masks.known_input(targets, known)
