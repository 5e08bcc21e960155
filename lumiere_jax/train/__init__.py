"""The trainer: train state, sharded step, Orbax checkpoints, metrics, and the training loop."""
