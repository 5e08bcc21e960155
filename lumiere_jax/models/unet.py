"""The text-to-image U-Net and its inflation into Lumiere's Space-Time U-Net (STUNet).

One class builds both: with `temporal.enabled = False` it is the T2I U-Net; with it enabled the
same spatial modules (same attribute paths, so a T2I checkpoint loads into them) are interleaved
with the temporal modules of `lumiere_jax.models.temporal`, as in Lumiere (section 3.1, app. B):

- levels 0 .. L-2 (all but the coarsest): a factorized space-time conv block after every spatial
  res/attention block, i.e. the spatial layers then a residual 1-D temporal conv;
- the coarsest level (L-1, with the middle block): a stack of temporal attention layers;
- after each spatial downsampling named in `temporal.downsample_levels`, a temporal downsampling,
  and a temporal upsampling after the matching spatial upsampling.

`image_mode=True` bypasses every temporal module, which makes the network exactly the T2I U-Net
on every frame (T2I pre-training and joint image-video training).
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models.attention import check_implementation
from lumiere_jax.models.layers import (
    Downsample, GroupNorm, LayerNorm, NoiseEmbedding, ResBlock, SpatialAttention, Upsample, conv, dense, zeros,
)
from lumiere_jax.models.temporal import (
    FrameEmbedding, TemporalAttention, TemporalConvBlock, TemporalDownsample, TemporalUpsample,
)
from lumiere_jax.parallel import axes
from lumiere_jax.parallel.sharding import create_sharded

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Rematerialisation of every block: trade recompute in the backward pass for activation memory.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Validated model hyper-parameters (mirrors `config.model`, see lumiere_jax/config.py)."""

    in_channels: int = 3
    patch_size: int = 1
    conditioning_channels: int = 0
    aug_conditioning: bool = False
    base_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_levels: Sequence[int] = (2, 3)
    head_dim: int = 64
    norm_groups: int = 32
    text_dim: int = 4096
    dtype: str = "float32"
    attention_impl: str = "xla"
    remat: str = "none"
    temporal: bool = True
    temporal_downsample_levels: Sequence[int] = (0, 1, 2)
    temporal_conv_kernel: int = 3
    temporal_attention_depth: int = 2
    temporal_attention_head_dim: int = 64
    temporal_max_relative_distance: int = 32
    temporal_frame_embedding: bool = False
    temporal_conditioned_convs: bool = False

    @classmethod
    def from_config(cls, model) -> "UNetConfig":
        """Builds from the `config.model` ConfigDict, flattening its `temporal` section."""
        t = model.temporal
        return cls(
            in_channels=model.in_channels, patch_size=model.patch_size,
            conditioning_channels=model.conditioning_channels,
            aug_conditioning=model.aug_conditioning,
            base_channels=model.base_channels, channel_mult=tuple(model.channel_mult),
            num_res_blocks=model.num_res_blocks, attention_levels=tuple(model.attention_levels),
            head_dim=model.head_dim, norm_groups=model.norm_groups, text_dim=model.text_dim, dtype=model.dtype,
            attention_impl=model.attention_impl, remat=model.remat, temporal=t.enabled,
            temporal_downsample_levels=tuple(t.downsample_levels), temporal_conv_kernel=t.conv_kernel,
            temporal_attention_depth=t.attention_depth, temporal_attention_head_dim=t.attention_head_dim,
            temporal_max_relative_distance=t.max_relative_distance,
            # exports written before these options existed lack the keys
            temporal_frame_embedding=bool(t.get("frame_embedding", False)),
            temporal_conditioned_convs=bool(t.get("conditioned_convs", False)),
        )

    def __post_init__(self):
        levels = len(self.channel_mult)
        problems = []
        if levels < 1 or any(m < 1 for m in self.channel_mult):
            problems.append(f"model.channel_mult={tuple(self.channel_mult)} needs at least one positive entry")
        if self.dtype not in DTYPES:
            problems.append(f"model.dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"model.remat={self.remat!r} is not one of {sorted(REMAT_POLICIES)}")
        try:
            check_implementation(self.attention_impl)
        except ValueError as e:
            problems.append(f"model.attention_impl: {e}")
        bad = [lv for lv in self.attention_levels if not 0 <= lv < levels]
        if bad:
            problems.append(f"model.attention_levels {bad} are outside levels 0..{levels - 1}")
        bad = [lv for lv in self.temporal_downsample_levels if not 0 <= lv < levels - 1]
        if bad:
            problems.append(f"model.temporal.downsample_levels {bad} must name spatial downsamplings 0..{levels - 2}")
        if len(set(self.temporal_downsample_levels)) != len(self.temporal_downsample_levels):
            problems.append("model.temporal.downsample_levels has repeated levels")
        for lv, ch in enumerate(self.level_channels):
            if ch % self.norm_groups:
                problems.append(f"level {lv} has {ch} channels, not divisible by model.norm_groups={self.norm_groups}")
            if lv in self.attention_levels and ch % self.head_dim:
                problems.append(f"level {lv} has {ch} channels, not divisible by model.head_dim={self.head_dim}")
        if self.temporal and self.level_channels[-1] % self.temporal_attention_head_dim:
            problems.append(f"coarsest level has {self.level_channels[-1]} channels, not divisible by "
                            f"model.temporal.attention_head_dim={self.temporal_attention_head_dim}")
        if self.temporal_conv_kernel < 1 or self.temporal_conv_kernel % 2 == 0:
            problems.append(f"model.temporal.conv_kernel={self.temporal_conv_kernel} must be odd and positive")
        if self.temporal_attention_depth < 0 or self.temporal_max_relative_distance < 1:
            problems.append("model.temporal.attention_depth must be >= 0 and max_relative_distance >= 1")
        if self.patch_size < 1:
            problems.append(f"model.patch_size={self.patch_size} must be >= 1")
        if self.num_res_blocks < 1 or self.in_channels < 1 or self.conditioning_channels < 0:
            problems.append("model.num_res_blocks and model.in_channels must be >= 1, conditioning_channels >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def frame_factor(self) -> int:
        """The number of frames must be a multiple of this: 2**(number of temporal downsamplings)."""
        return 2 ** len(self.temporal_downsample_levels) if self.temporal else 1

    def check_frames(self, frames: int) -> None:
        if frames % self.frame_factor:
            k = len(self.temporal_downsample_levels)
            raise ValueError(
                f"num_frames={frames} is not divisible by 2**{k}={self.frame_factor} "
                f"({k} temporal downsamplings at levels {tuple(self.temporal_downsample_levels)}); "
                f"use a multiple of {self.frame_factor} or fewer model.temporal.downsample_levels"
            )

    def level_shapes(self, frames: int, resolution: int) -> list[dict]:
        """Frames and resolution at which each level runs (for reports and checks)."""
        out = []
        for lv in range(self.num_levels):
            out.append({"level": lv, "frames": frames, "resolution": resolution // self.patch_size // 2**lv,
                        "channels": self.level_channels[lv]})
            if self.temporal and lv in self.temporal_downsample_levels:
                frames //= 2
        return out


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(N, H, W, C) -> (N, H/p, W/p, p*p*C): pixel patches as channels, so the U-Net runs at 1/p size."""
    if p == 1:
        return x
    n, h, w, c = x.shape
    x = x.reshape(n, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h // p, w // p, p * p * c)


def unpatchify(x: jax.Array, p: int) -> jax.Array:
    """The inverse of `patchify`."""
    if p == 1:
        return x
    n, h, w, c = x.shape
    x = x.reshape(n, h, w, p, p, c // (p * p)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, h * p, w * p, c // (p * p))


class Level(nnx.Module):
    """The spatial blocks of one resolution level, each followed by its temporal conv block if any."""

    def __init__(self, cfg: UNetConfig, in_chs: Sequence[int], out_ch: int, attend: bool, temporal: bool,
                 emb_dim: int, text_ch: int, rngs: nnx.Rngs):
        dt = DTYPES[cfg.dtype]
        self.blocks = nnx.List([ResBlock(c, out_ch, emb_dim, cfg.norm_groups, rngs, dt) for c in in_chs])
        self.attns = nnx.List([
            SpatialAttention(out_ch, text_ch, cfg.head_dim, cfg.norm_groups, rngs, dt, cfg.attention_impl)
            for _ in in_chs
        ]) if attend else None
        conv_emb = emb_dim if cfg.temporal_conditioned_convs else None
        self.temporal_convs = nnx.List([
            TemporalConvBlock(out_ch, cfg.temporal_conv_kernel, cfg.norm_groups, rngs, dt, conv_emb) for _ in in_chs
        ]) if temporal else None


class UNet(nnx.Module):
    """T2I U-Net (temporal disabled) or STUNet (enabled) on channels-last video (B, T, H, W, C)."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = DTYPES[cfg.dtype]
        chs, levels = cfg.level_channels, cfg.num_levels
        emb_dim, text_ch = 4 * cfg.base_channels, chs[-1]
        temporal_level = lambda lv: cfg.temporal and lv < levels - 1  # noqa: E731

        self.noise_embedding = NoiseEmbedding(cfg.base_channels, emb_dim, rngs, dt)
        # SSR: the noise level of the conditioning augmentation applied to the low-resolution input.
        self.aug_embedding = NoiseEmbedding(cfg.base_channels, emb_dim, rngs, dt) if cfg.aug_conditioning else None
        self.text_norm = LayerNorm(cfg.text_dim, rngs, dt)
        self.text_proj = dense(cfg.text_dim, text_ch, rngs, dtype=dt)
        self.text_pool = dense(text_ch, emb_dim, rngs, dtype=dt, in_axis=axes.MLP, out_axis=axes.EMBED)
        # Video channels are few (3, 4): never shard them.
        p2 = cfg.patch_size**2
        self.input_conv = conv(cfg.in_channels * p2, cfg.base_channels, (3, 3), rngs, dtype=dt, in_axis=None)
        self.cond_input = conv(cfg.conditioning_channels * p2, cfg.base_channels, (3, 3), rngs, dtype=dt, in_axis=None,
                               kernel_init=zeros, use_bias=False) if cfg.conditioning_channels else None

        skips, ch = [cfg.base_channels], cfg.base_channels
        down = []
        for lv in range(levels):
            in_chs = [ch] + [chs[lv]] * (cfg.num_res_blocks - 1)
            down.append(Level(cfg, in_chs, chs[lv], lv in cfg.attention_levels, temporal_level(lv), emb_dim,
                              text_ch, rngs))
            ch = chs[lv]
            skips += [ch] * cfg.num_res_blocks
            if lv < levels - 1:
                skips.append(ch)
        self.down = nnx.List(down)
        self.downsamples = nnx.List([Downsample(chs[lv], rngs, dt) for lv in range(levels - 1)])

        self.mid_block1 = ResBlock(ch, ch, emb_dim, cfg.norm_groups, rngs, dt)
        self.mid_attn = SpatialAttention(ch, text_ch, cfg.head_dim, cfg.norm_groups, rngs, dt, cfg.attention_impl) \
            if (levels - 1) in cfg.attention_levels else None
        self.mid_block2 = ResBlock(ch, ch, emb_dim, cfg.norm_groups, rngs, dt)

        up = []
        for lv in reversed(range(levels)):
            in_chs = []
            for _ in range(cfg.num_res_blocks + 1):
                in_chs.append(ch + skips.pop())
                ch = chs[lv]
            up.append(Level(cfg, in_chs, chs[lv], lv in cfg.attention_levels, temporal_level(lv), emb_dim,
                            text_ch, rngs))
        self.up = nnx.List(up[::-1])  # indexed by level, like `down`
        self.upsamples = nnx.List([Upsample(chs[lv + 1], rngs, dt) for lv in range(levels - 1)])

        self.out_norm = GroupNorm(ch, cfg.norm_groups, rngs, dt)
        self.out_conv = conv(ch, cfg.in_channels * p2, (3, 3), rngs, dtype=dt, kernel_init=zeros, out_axis=None)

        if cfg.temporal:
            t_levels = cfg.temporal_downsample_levels
            k = cfg.temporal_conv_kernel
            self.temporal_downsamples = nnx.Dict({str(lv): TemporalDownsample(chs[lv], k, rngs, dt) for lv in t_levels})
            self.temporal_upsamples = nnx.Dict({str(lv): TemporalUpsample(chs[lv + 1], k, rngs, dt) for lv in t_levels})
            self.temporal_attention = nnx.List([
                TemporalAttention(chs[-1], cfg.temporal_attention_head_dim, cfg.temporal_max_relative_distance,
                                  rngs, dt, cfg.attention_impl)
                for _ in range(cfg.temporal_attention_depth)
            ])
            self.temporal_frame_embedding = FrameEmbedding(cfg.base_channels, text_ch, emb_dim, rngs, dt) \
                if cfg.temporal_frame_embedding else None

    # -- helpers -------------------------------------------------------------------------------
    def _check_inputs(self, x, logsnr, text, text_mask, image_mode, aug_logsnr):
        cfg = self.cfg
        want = cfg.in_channels + cfg.conditioning_channels
        if x.ndim != 5 or x.shape[-1] != want:
            raise ValueError(f"expected video (B, T, H, W, {want}), got shape {x.shape}")
        factor = cfg.patch_size * 2 ** (cfg.num_levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"height and width {x.shape[2:4]} must be divisible by "
                             f"patch_size * 2**(levels-1) = {factor}")
        if logsnr.shape != (x.shape[0],):
            raise ValueError(f"logsnr must have shape ({x.shape[0]},), got {logsnr.shape}")
        if text.ndim != 3 or text.shape[0] != x.shape[0] or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text embeddings must be (B={x.shape[0]}, L, {cfg.text_dim}), got {text.shape}")
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask shape {text_mask.shape} must equal text shape[:2] {text.shape[:2]}")
        if cfg.temporal and not image_mode:
            cfg.check_frames(x.shape[1])
        if (aug_logsnr is None) == cfg.aug_conditioning:
            raise ValueError("aug_logsnr (B,) is required exactly when model.aug_conditioning is set")
        if aug_logsnr is not None and aug_logsnr.shape != (x.shape[0],):
            raise ValueError(f"aug_logsnr must have shape ({x.shape[0]},), got {aug_logsnr.shape}")

    def _run(self, module, *args):
        """Calls a block, rematerialised in the backward pass when `model.remat` asks for it."""
        if self.cfg.remat == "none":
            return module(*args)
        # Split/merge around jax.checkpoint (not nnx.remat): the train step differentiates merged
        # parameters, and nnx.remat would try to mutate them from inside another trace.
        graphdef, state = nnx.split(module)
        run = jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a), policy=REMAT_POLICIES[self.cfg.remat])
        return run(state, *args)

    def _temporal(self, module, h, batch, *args):
        """Applies a video module to frames folded into the batch; returns (h, frames)."""
        unfold = lambda a: a.reshape(batch, -1, *a.shape[1:])  # noqa: E731
        video = self._run(module, unfold(h), *map(unfold, args))
        return video.reshape(-1, *video.shape[2:]), video.shape[1]

    def _level(self, level: Level, h, emb, text, mask, skips, batch, temporal, pop: bool):
        for i, block in enumerate(level.blocks):
            h = self._run(block, jnp.concatenate([h, skips.pop()], axis=-1) if pop else h, emb)
            if level.attns is not None:
                h = self._run(level.attns[i], h, text, mask)
            if temporal and level.temporal_convs is not None:
                h, _ = self._temporal(level.temporal_convs[i], h, batch, emb)
            if not pop:
                skips.append(h)
        return h

    # -- forward -------------------------------------------------------------------------------
    def __call__(self, x, logsnr, text=None, text_mask=None, *, image_mode: bool = False, aug_logsnr=None):
        """Predicts the diffusion target for noisy video `x` (B, T, H, W, C) at noise level `logsnr` (B,).

        `text` (B, L, text_dim) and `text_mask` (B, L) are the frozen text-encoder token embeddings;
        None means the null prompt. With `model.conditioning_channels` set, the last channels of `x`
        are the conditioning video (and mask); with `model.aug_conditioning`, `aug_logsnr` (B,) is the
        noise level of the augmentation applied to that conditioning (SSR). Returns (B, T, H, W, in_channels).
        """
        cfg = self.cfg
        dt = DTYPES[cfg.dtype]
        b, frames = x.shape[:2]
        if text is None:
            text = jnp.zeros((b, 1, cfg.text_dim), dt)
            text_mask = jnp.zeros((b, 1), bool)
        self._check_inputs(x, logsnr, text, text_mask, image_mode, aug_logsnr)
        temporal = cfg.temporal and not image_mode

        text_tokens = self.text_proj(self.text_norm(text.astype(dt)))
        keep = text_mask.astype(dt)[..., None]
        pooled = (text_tokens * keep).sum(1) / jnp.maximum(keep.sum(1), 1.0)
        emb = self.noise_embedding(logsnr) + self.text_pool(pooled)
        if self.aug_embedding is not None:
            emb = emb + self.aug_embedding(aug_logsnr)

        per_frame = {}

        def conditioning(n_frames):
            if n_frames not in per_frame:
                rep = lambda a: jnp.repeat(a, n_frames, axis=0)  # noqa: E731
                frame_emb = rep(emb)
                if temporal and self.temporal_frame_embedding is not None:  # frames are folded batch-major
                    frame_emb = frame_emb + self.temporal_frame_embedding(pooled, n_frames).reshape(frame_emb.shape)
                per_frame[n_frames] = (frame_emb, rep(text_tokens), rep(text_mask))
            return per_frame[n_frames]

        x = x.astype(dt)
        flat = x.reshape(b * frames, *x.shape[2:])
        h = self.input_conv(patchify(flat[..., : cfg.in_channels], cfg.patch_size))
        if self.cond_input is not None:
            h = h + self.cond_input(patchify(flat[..., cfg.in_channels:], cfg.patch_size))
        skips = [h]
        for lv, level in enumerate(self.down):
            h = self._level(level, h, *conditioning(frames), skips, b, temporal, pop=False)
            if lv < cfg.num_levels - 1:
                h = self.downsamples[lv](h)
                if temporal and lv in cfg.temporal_downsample_levels:
                    h, frames = self._temporal(self.temporal_downsamples[str(lv)], h, b)
                skips.append(h)

        e, txt, m = conditioning(frames)
        h = self._run(self.mid_block1, h, e)
        if self.mid_attn is not None:
            h = self._run(self.mid_attn, h, txt, m)
        if temporal:
            for layer in self.temporal_attention:
                h, _ = self._temporal(layer, h, b)
        h = self._run(self.mid_block2, h, e)

        for lv in reversed(range(cfg.num_levels)):
            h = self._level(self.up[lv], h, *conditioning(frames), skips, b, temporal, pop=True)
            if lv > 0:
                h = self.upsamples[lv - 1](h)
                if temporal and (lv - 1) in cfg.temporal_downsample_levels:
                    h, frames = self._temporal(self.temporal_upsamples[str(lv - 1)], h, b)

        out = unpatchify(self.out_conv(jax.nn.silu(self.out_norm(h))), cfg.patch_size)
        return out.reshape(b, -1, *out.shape[1:]).astype(jnp.float32)


def build_unet(model_config, *, seed: int = 0, temporal: Optional[bool] = None, mesh=None, rules=None) -> UNet:
    """Builds the U-Net from `config.model` (sharded over `mesh` when given).

    `temporal` overrides `model.temporal.enabled` (False: the T2I U-Net of the same backbone).
    """
    cfg = UNetConfig.from_config(model_config)
    if temporal is not None:
        cfg = dataclasses.replace(cfg, temporal=temporal)
    return create_sharded(lambda: UNet(cfg, rngs=nnx.Rngs(seed)), mesh, rules)
