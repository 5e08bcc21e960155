"""The train state: model, optimizer state of the trainable parameters only, their EMA, counters.

It is one NNX module, so `nnx.state(train_state)` is everything a checkpoint needs and its
variables carry the model's logical axes: the optimizer moments and EMA shard like the parameters.
The step's random numbers are `fold_in(seed, step)`, so the RNG is part of the state implicitly
and a resumed run draws exactly what an uninterrupted one would.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lumiere_jax.models import param_groups

TRAINABLE = {"temporal": param_groups.NEW, "all": nnx.Param, "spatial": param_groups.SPATIAL}


def trainable_filter(name: str):
    if name not in TRAINABLE:
        raise ValueError(f"train.trainable={name!r} is not one of {sorted(TRAINABLE)}")
    return TRAINABLE[name]


class EMA(nnx.Variable):
    """Exponential moving average of a trainable parameter (what sampling uses)."""


class Counter(nnx.Variable):
    """An integer the step keeps (steps done, non-finite updates skipped)."""


def _ema_copy(variable: nnx.Variable) -> EMA:
    return EMA(variable.get_raw_value(), **variable.get_metadata())


class TrainState(nnx.Module):
    def __init__(self, model: nnx.Module, tx: optax.GradientTransformation, trainable: str):
        self.trainable = trainable
        wrt = trainable_filter(trainable)
        self.model = model
        self.optimizer = nnx.Optimizer(model, tx, wrt=wrt)
        params = nnx.state(model, wrt)
        self.ema = nnx.data(jax.tree.map(_ema_copy, params, is_leaf=lambda x: isinstance(x, nnx.Variable)))
        self.step = Counter(jnp.zeros((), jnp.int32))
        self.nonfinite_total = Counter(jnp.zeros((), jnp.int32))
        self.nonfinite_streak = Counter(jnp.zeros((), jnp.int32))

    @property
    def wrt(self):
        return trainable_filter(self.trainable)

    def update_ema(self, decay: float) -> None:
        """ema <- d ema + (1 - d) params, with d warmed up as min(decay, (1 + step) / (10 + step))."""
        step = self.step[...].astype(jnp.float32)
        d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
        params = nnx.state(self.model, self.wrt)
        new = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, nnx.to_pure_dict(self.ema), nnx.to_pure_dict(params))
        nnx.replace_by_pure_dict(self.ema, new)

    def ema_model(self) -> nnx.Module:
        """A copy of the model with the EMA in place of the trainable parameters (for sampling)."""
        model = nnx.clone(self.model)
        params = nnx.state(model, self.wrt)
        nnx.replace_by_pure_dict(params, nnx.to_pure_dict(self.ema))
        nnx.update(model, params)
        return model
