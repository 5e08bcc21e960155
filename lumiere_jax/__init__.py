"""lumiere_jax: Lumiere-style space-time diffusion (STUNet, SSR, T5) in JAX / Flax NNX."""

__version__ = "0.1.0"
