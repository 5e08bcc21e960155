"""Orbax checkpoints of the train state, the data iterator position and the config.

Saves are asynchronous (training goes on while the arrays are written) and atomic: Orbax writes
to a temporary directory and renames it when complete, so a run killed mid-save restarts from
the previous complete checkpoint. Restoring takes the target shardings of the *current* mesh,
so a checkpoint saved on one mesh shape restores onto another.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp
from flax import nnx

from lumiere_jax.models.weights import register_array_handler


class IteratorState:
    """Adapts any iterator with JSON-able get_state()/set_state() to grain's Orbax handler.

    Grain's handler writes one file per process (`process_i-of-n.json`), which is what a pod
    needs: every host resumes its own slice of the data.
    """

    def __init__(self, iterator):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        """Part of grain's handler protocol; the wrapped iterator prefetches on its own."""


class Checkpointer:
    def __init__(self, directory: pathlib.Path, train, config_dict: dict):
        if train.checkpoint_every < 1 or train.keep_checkpoints < 1 or train.keep_every < 0:
            raise ValueError("train.checkpoint_every and train.keep_checkpoints must be >= 1, train.keep_every >= 0")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=train.keep_checkpoints,
            keep_period=train.keep_every or None,
            enable_async_checkpointing=True,
            create=True,
        )
        register_array_handler()
        self.manager = ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)
        self.config_dict = config_dict

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, data_iterator: Optional[Any]) -> None:
        items = {
            "state": ocp.args.StandardSave(nnx.to_pure_dict(state)),
            "config": ocp.args.JsonSave(self.config_dict),
        }
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(IteratorState(data_iterator))
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(self, step: int, target: nnx.State, data_iterator: Optional[Any]) -> nnx.State:
        """Restores `step` into the structure, dtypes and shardings of `target` (arrays or abstract)."""
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), nnx.to_pure_dict(target)
        )
        items = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(IteratorState(data_iterator))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        state = jax.tree.map(lambda x: x, target)
        nnx.replace_by_pure_dict(state, restored["state"])
        return state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
