"""What the network predicts (v or eps) and the exact conversions between x0, eps and v.

Definitions, with z = alpha x0 + sigma eps and alpha^2 + sigma^2 = 1:
    v = alpha eps - sigma x0                                   (Salimans & Ho 2022)
so x0 = alpha z - sigma v and eps = sigma z + alpha v: from v both are recovered without dividing
by alpha or sigma, which is why v-prediction is the default (eps-prediction divides by alpha to
get x0 and is ill-conditioned near pure noise). Every function here is elementwise; alpha and
sigma must already broadcast against the data (see `schedule.per_example`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

PARAMETERIZATIONS = ("v", "eps")


def check_parameterization(name: str) -> str:
    """Returns `name` if it is a known parameterisation, else raises naming the config key."""
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"diffusion.parameterization={name!r} is not supported; use one of {PARAMETERIZATIONS}")
    return name


def v_from_x0_eps(x0, eps, alpha, sigma) -> jax.Array:
    return alpha * eps - sigma * x0


def x0_from_eps(z, eps, alpha, sigma) -> jax.Array:
    return (z - sigma * eps) / alpha


def eps_from_x0(z, x0, alpha, sigma) -> jax.Array:
    return (z - alpha * x0) / sigma


def x0_from_v(z, v, alpha, sigma) -> jax.Array:
    return alpha * z - sigma * v


def eps_from_v(z, v, alpha, sigma) -> jax.Array:
    return sigma * z + alpha * v


def v_from_x0(z, x0, alpha, sigma) -> jax.Array:
    """v = (alpha z - x0) / sigma (eliminates eps = (z - alpha x0) / sigma from the definition)."""
    return (alpha * z - x0) / sigma


def v_from_eps(z, eps, alpha, sigma) -> jax.Array:
    """v = (eps - sigma z) / alpha (eliminates x0 = (z - sigma eps) / alpha from the definition)."""
    return (eps - sigma * z) / alpha


def training_target(x0, eps, alpha, sigma, parameterization: str) -> jax.Array:
    """The regression target of a network with this parameterisation, from the true x0 and eps."""
    if check_parameterization(parameterization) == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    return eps


def output_to_x0_eps(output, z, alpha, sigma, parameterization: str) -> tuple[jax.Array, jax.Array]:
    """Network output at z -> its implied (x0, eps) predictions, in float32."""
    output = jnp.asarray(output, jnp.float32)
    if check_parameterization(parameterization) == "v":
        return x0_from_v(z, output, alpha, sigma), eps_from_v(z, output, alpha, sigma)
    return x0_from_eps(z, output, alpha, sigma), output
