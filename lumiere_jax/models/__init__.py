"""Flax NNX models: layers, the T2I U-Net and its space-time inflation (STUNet), T5."""
