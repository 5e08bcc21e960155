"""Classifier-free guidance (Ho & Salimans 2022) and the train-time conditioning dropout it needs.

Conditioning is any pytree whose leaves are batch-first arrays (e.g. {'embeddings': (B, L, D),
'mask': (B, L)}). The "null" conditioning is always passed explicitly. The project's convention
for null *text* is "no tokens": every leaf zero (embeddings zeroed, mask all zero), which is what
`null_text_conditioning` builds; the model must be trained with that same null (see
`drop_conditioning`) for guidance to mean anything.
"""
from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lumiere_jax.diffusion.schedule import per_example

# (z, logsnr (B,), conditioning pytree) -> output shaped like z
ConditionalModelFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def null_text_conditioning(conditioning: Any) -> Any:
    """The project's null text: the same pytree with every leaf zeroed (no tokens, empty mask)."""
    return jax.tree.map(jnp.zeros_like, conditioning)


def _check_same_layout(conditioning: Any, null_conditioning: Any) -> None:
    """Raises unless both pytrees have the same structure and leaf shapes (checked at trace time)."""
    if jax.tree.structure(conditioning) != jax.tree.structure(null_conditioning):
        raise ValueError(
            "null_conditioning must have the same pytree structure as conditioning; got "
            f"{jax.tree.structure(null_conditioning)} vs {jax.tree.structure(conditioning)}"
        )
    for c, n in zip(jax.tree.leaves(conditioning), jax.tree.leaves(null_conditioning)):
        if jnp.shape(c) != jnp.shape(n):
            raise ValueError(
                f"null_conditioning leaf of shape {jnp.shape(n)} does not match conditioning leaf of shape "
                f"{jnp.shape(c)}; build it per batch, e.g. with null_text_conditioning(conditioning)"
            )


def guide(cond_out: jax.Array, uncond_out: jax.Array, scale) -> jax.Array:
    """uncond + scale (cond - uncond), written as (1 - scale) uncond + scale cond.

    The two forms are equal algebraically; this one returns uncond exactly at scale 0 and cond
    exactly at scale 1 (no rounding from the difference), so guidance off is truly off.
    """
    return (1.0 - scale) * uncond_out + scale * cond_out


def guidance_branches(scale) -> int:
    """Model rows per example that `classifier_free_guidance` evaluates: 1 for the Python numbers 0 and
    1 (only the surviving branch runs), else 2 (conditional and unconditional in one batch)."""
    return 1 if isinstance(scale, numbers.Number) and scale in (0, 1) else 2


def classifier_free_guidance(
    model_fn: ConditionalModelFn, conditioning: Any, null_conditioning: Any, scale
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Returns predict(z, logsnr) = guide(model(z, cond), model(z, null), scale) for the samplers.

    Conditional and unconditional branches run in ONE model call on a doubled batch (cond first,
    then null), so the weights are read once per step. When `scale` is the Python number 0 or 1,
    only the branch that survives is evaluated (half the compute); a traced scale always takes
    the batched path. Guidance applies to the raw model output; since every conversion to x0 or
    eps is linear in it for a fixed z, that equals guiding x0 or eps.
    """
    _check_same_layout(conditioning, null_conditioning)
    if guidance_branches(scale) == 1:
        only = null_conditioning if scale == 0 else conditioning
        return lambda z, logsnr: model_fn(z, logsnr, only)

    def predict(z: jax.Array, logsnr: jax.Array) -> jax.Array:
        batch = z.shape[0]
        both = jax.tree.map(lambda c, n: jnp.concatenate([c, n], axis=0), conditioning, null_conditioning)
        out = model_fn(jnp.concatenate([z, z], axis=0), jnp.concatenate([logsnr, logsnr], axis=0), both)
        return guide(out[:batch], out[batch:], scale)

    return predict


def drop_conditioning(rng: jax.Array, conditioning: Any, null_conditioning: Any, p: float) -> Any:
    """With probability p, independently per example, replaces the conditioning by the null one.

    This is what teaches the model its unconditional branch (Imagen uses p = 0.1). Every leaf of
    one example is replaced together, so embeddings and mask stay consistent.
    """
    if not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ValueError(f"conditioning dropout probability p={p!r} must be a number in [0, 1]")
    _check_same_layout(conditioning, null_conditioning)
    leaves = jax.tree.leaves(conditioning)
    if not leaves:
        raise ValueError("conditioning has no array leaves; there is nothing to drop")
    batch = jnp.shape(leaves[0])[0]
    keep = jax.random.uniform(rng, (batch,)) >= p
    return jax.tree.map(lambda c, n: jnp.where(per_example(keep, c), c, n), conditioning, null_conditioning)
