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

Two spatial block sets share that skeleton (`model.block_set`): `imagen`, ours (SiLU, conv
resampling, text joined to the attention keys after a LayerNorm, mean-pooled text), and
`deepfloyd_if`, the blocks of the released DeepFloyd IF models (exact GELU, res-block resampling,
added-KV attention with a text GroupNorm per layer, attention-pooled text, DDPM-step noise
features; models/if_blocks.py), so IF-I and IF-II load exactly (models/diffusers_if.py) and are
inflated by the same temporal modules.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lumiere_jax.models.attention import check_implementation
from lumiere_jax.models.if_blocks import TEXT_NORM_GROUPS, AddedKVAttention, AttentionPooledText
from lumiere_jax.models.layers import (
    Downsample, GroupNorm, LayerNorm, NoiseEmbedding, ResBlock, SpatialAttention, Upsample, conv, dense, exact_gelu,
    zeros,
)
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.temporal import (
    FRAME_POSITIONS, FrameEmbedding, TemporalAttention, TemporalConvBlock, TemporalDownsample, TemporalUpsample,
)
from lumiere_jax.parallel import axes
from lumiere_jax.parallel.sharding import create_sharded

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Rematerialisation of every block: trade recompute in the backward pass for activation memory.
BLOCK_SETS = ("imagen", "deepfloyd_if")
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
    temporal_frame_position: str = "clip"
    temporal_max_clip_frames: int = 0
    block_set: str = "imagen"
    res_blocks_per_level: Sequence[int] = ()
    emb_dim: int = 0
    learned_variance: bool = False
    res_output_scale: float = 1.0
    text_pool_heads: int = 64
    text_only_attention: bool = False
    lowres_align_corners: bool = False

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
            temporal_frame_position=t.get("frame_position", "clip"),
            temporal_max_clip_frames=int(t.get("max_clip_frames", 0)),
            block_set=model.get("block_set", "imagen"),
            res_blocks_per_level=tuple(model.get("res_blocks_per_level", ())),
            emb_dim=model.get("emb_dim", 0), learned_variance=bool(model.get("learned_variance", False)),
            res_output_scale=float(model.get("res_output_scale", 1.0)),
            text_pool_heads=model.get("text_pool_heads", 64),
            text_only_attention=bool(model.get("text_only_attention", False)),
            lowres_align_corners=bool(model.get("lowres_align_corners", False)),
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
        if self.temporal_frame_position not in FRAME_POSITIONS:
            problems.append(f"model.temporal.frame_position={self.temporal_frame_position!r} is not one of "
                            f"{FRAME_POSITIONS}")
        if self.temporal_max_clip_frames < 0:
            problems.append(f"model.temporal.max_clip_frames={self.temporal_max_clip_frames} must be >= 0 (0: the "
                            "training length)")
        if self.patch_size < 1:
            problems.append(f"model.patch_size={self.patch_size} must be >= 1")
        if self.num_res_blocks < 1 or self.in_channels < 1 or self.conditioning_channels < 0:
            problems.append("model.num_res_blocks and model.in_channels must be >= 1, conditioning_channels >= 0")
        if self.res_blocks_per_level and (len(self.res_blocks_per_level) != levels
                                          or any(n < 1 for n in self.res_blocks_per_level)):
            problems.append(f"model.res_blocks_per_level={tuple(self.res_blocks_per_level)} needs one count >= 1 per "
                            f"level ({levels}), or () for model.num_res_blocks everywhere")
        if self.emb_dim < 0 or not self.res_output_scale > 0:
            problems.append("model.emb_dim must be >= 0 (0: 4 x base_channels) and model.res_output_scale > 0")
        problems += self._block_set_problems()
        if problems:
            raise ValueError("; ".join(problems))

    def _block_set_problems(self) -> list[str]:
        if self.block_set not in BLOCK_SETS:
            return [f"model.block_set={self.block_set!r} is not one of {BLOCK_SETS}"]
        if self.block_set == "imagen":
            return ["model.text_only_attention needs model.block_set='deepfloyd_if'"] if self.text_only_attention else []
        problems = []
        if self.num_levels - 1 not in self.attention_levels:
            problems.append("model.block_set='deepfloyd_if' has attention in the middle block: the coarsest level must "
                            "be in model.attention_levels")
        if self.level_channels[-1] % TEXT_NORM_GROUPS:
            problems.append(f"model.block_set='deepfloyd_if' normalises the projected text in {TEXT_NORM_GROUPS} groups: "
                            f"the coarsest level's {self.level_channels[-1]} channels must be a multiple")
        if self.text_pool_heads < 1 or self.text_dim % self.text_pool_heads:
            problems.append(f"model.text_pool_heads={self.text_pool_heads} must divide model.text_dim={self.text_dim}")
        return problems

    @property
    def deepfloyd_if(self) -> bool:
        return self.block_set == "deepfloyd_if"

    @property
    def activation(self):
        return exact_gelu if self.deepfloyd_if else jax.nn.silu

    @property
    def embedding_dim(self) -> int:
        return self.emb_dim or 4 * self.base_channels

    @property
    def out_channels(self) -> int:
        """What the network outputs: the prediction, then (learned_variance) as many variance channels."""
        return self.in_channels * (2 if self.learned_variance else 1)

    def res_blocks(self, level: int) -> int:
        return self.res_blocks_per_level[level] if self.res_blocks_per_level else self.num_res_blocks

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

    @property
    def frame_positions(self) -> Optional[str]:
        """Where the model counts a frame's place from ('clip' or 'global', model.temporal.frame_position),
        or None for a model that reads no place (no frame embedding, or no temporal modules)."""
        return self.temporal_frame_position if self.temporal and self.temporal_frame_embedding else None

    @property
    def windows_share_positions(self) -> bool:
        """False when windows of a longer clip would tell a frame different positions: a frame
        embedding counting from each window's start (model.temporal.frame_position='clip')."""
        return self.frame_positions != "clip"

    @property
    def longest_clip(self) -> Optional[int]:
        """The most frames whose positions a 'global' frame embedding saw in training (None: any length,
        as the model reads no place; 0: the training length)."""
        return None if self.frame_positions is None else self.temporal_max_clip_frames

    @property
    def window_grid(self) -> int:
        """Windows of a long clip start on multiples of this: the temporal downsampling for a model
        counting places from the long clip's start, as its training starts do, so that a coarse frame
        pools the same input frames in every window; 1 (any start) for every other model."""
        return self.frame_factor if self.frame_positions == "global" else 1

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


def res_block(cfg: UNetConfig, in_ch: int, out_ch: int, rngs: nnx.Rngs, resample=None) -> ResBlock:
    return ResBlock(in_ch, out_ch, cfg.embedding_dim, cfg.norm_groups, rngs, DTYPES[cfg.dtype], act=cfg.activation,
                    resample=resample, output_scale=cfg.res_output_scale)


def spatial_attention(cfg: UNetConfig, channels: int, rngs: nnx.Rngs):
    """The block set's attention over each frame's tokens and the (projected) text tokens."""
    dt, text_ch = DTYPES[cfg.dtype], cfg.level_channels[-1]
    if cfg.deepfloyd_if:
        return AddedKVAttention(channels, text_ch, cfg.head_dim, cfg.norm_groups, rngs, dt, cfg.attention_impl,
                                self_attention=not cfg.text_only_attention)
    return SpatialAttention(channels, text_ch, cfg.head_dim, cfg.norm_groups, rngs, dt, cfg.attention_impl)


def downsample(cfg: UNetConfig, channels: int, rngs: nnx.Rngs):
    if cfg.deepfloyd_if:
        return res_block(cfg, channels, channels, rngs, "down")
    return Downsample(channels, rngs, DTYPES[cfg.dtype])


def upsample(cfg: UNetConfig, channels: int, rngs: nnx.Rngs):
    if cfg.deepfloyd_if:
        return res_block(cfg, channels, channels, rngs, "up")
    return Upsample(channels, rngs, DTYPES[cfg.dtype])


class Level(nnx.Module):
    """The spatial blocks of one resolution level, each followed by its temporal conv block if any."""

    def __init__(self, cfg: UNetConfig, in_chs: Sequence[int], out_ch: int, attend: bool, temporal: bool,
                 rngs: nnx.Rngs):
        dt = DTYPES[cfg.dtype]
        self.blocks = nnx.List([res_block(cfg, c, out_ch, rngs) for c in in_chs])
        self.attns = nnx.List([spatial_attention(cfg, out_ch, rngs) for _ in in_chs]) if attend else None
        conv_emb = cfg.embedding_dim if cfg.temporal_conditioned_convs else None
        self.temporal_convs = nnx.List([
            TemporalConvBlock(out_ch, cfg.temporal_conv_kernel, cfg.norm_groups, rngs, dt, conv_emb) for _ in in_chs
        ]) if temporal else None


class UNet(nnx.Module):
    """T2I U-Net (temporal disabled) or STUNet (enabled) on channels-last video (B, T, H, W, C)."""

    def __init__(self, cfg: UNetConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dt = DTYPES[cfg.dtype]
        chs, levels = cfg.level_channels, cfg.num_levels
        emb_dim, text_ch = cfg.embedding_dim, chs[-1]
        temporal_level = lambda lv: cfg.temporal and lv < levels - 1  # noqa: E731

        features = "ddpm_step" if cfg.deepfloyd_if else "cosine_time"
        noise_embedding = lambda: NoiseEmbedding(cfg.base_channels, emb_dim, rngs, dt, features=features,  # noqa: E731
                                                 act=cfg.activation)
        self.noise_embedding = noise_embedding()
        # SSR: the noise level of the conditioning augmentation applied to the low-resolution input
        # (IF-II's "class embedding" of its noise_level).
        self.aug_embedding = noise_embedding() if cfg.aug_conditioning else None
        if cfg.deepfloyd_if:  # no norm before the projection; the pooled text comes from the raw tokens
            self.text_norm = None
            self.text_pool = AttentionPooledText(cfg.text_dim, emb_dim, cfg.text_pool_heads, rngs, dt)
        else:
            self.text_norm = LayerNorm(cfg.text_dim, rngs, dt)
            self.text_pool = dense(text_ch, emb_dim, rngs, dtype=dt, in_axis=axes.MLP, out_axis=axes.EMBED)
        self.text_proj = dense(cfg.text_dim, text_ch, rngs, dtype=dt)
        # Video channels are few (3, 4): never shard them.
        p2 = cfg.patch_size**2
        self.input_conv = conv(cfg.in_channels * p2, cfg.base_channels, (3, 3), rngs, dtype=dt, in_axis=None)
        self.cond_input = conv(cfg.conditioning_channels * p2, cfg.base_channels, (3, 3), rngs, dtype=dt, in_axis=None,
                               kernel_init=zeros, use_bias=False) if cfg.conditioning_channels else None

        skips, ch = [cfg.base_channels], cfg.base_channels
        down = []
        for lv in range(levels):
            in_chs = [ch] + [chs[lv]] * (cfg.res_blocks(lv) - 1)
            down.append(Level(cfg, in_chs, chs[lv], lv in cfg.attention_levels, temporal_level(lv), rngs))
            ch = chs[lv]
            skips += [ch] * cfg.res_blocks(lv)
            if lv < levels - 1:
                skips.append(ch)
        self.down = nnx.List(down)
        self.downsamples = nnx.List([downsample(cfg, chs[lv], rngs) for lv in range(levels - 1)])

        self.mid_block1 = res_block(cfg, ch, ch, rngs)
        self.mid_attn = spatial_attention(cfg, ch, rngs) if (levels - 1) in cfg.attention_levels else None
        self.mid_block2 = res_block(cfg, ch, ch, rngs)

        up = []
        for lv in reversed(range(levels)):
            in_chs = []
            for _ in range(cfg.res_blocks(lv) + 1):
                in_chs.append(ch + skips.pop())
                ch = chs[lv]
            up.append(Level(cfg, in_chs, chs[lv], lv in cfg.attention_levels, temporal_level(lv), rngs))
        self.up = nnx.List(up[::-1])  # indexed by level, like `down`
        self.upsamples = nnx.List([upsample(cfg, chs[lv + 1], rngs) for lv in range(levels - 1)])

        self.out_norm = GroupNorm(ch, cfg.norm_groups, rngs, dt)
        self.out_conv = conv(ch, cfg.out_channels * p2, (3, 3), rngs, dtype=dt, kernel_init=zeros, out_axis=None)

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

    def _check_frame_start(self, frame_start, batch: int) -> None:
        if frame_start is None:
            return
        if self.cfg.temporal_frame_position != "global":
            raise ValueError("frame_start is read only by model.temporal.frame_position='global' (this model counts "
                             f"frames from each clip's start: {self.cfg.temporal_frame_position!r}); pass None")
        if jnp.shape(frame_start) != (batch,):
            raise ValueError(f"frame_start must have shape ({batch},), got {jnp.shape(frame_start)}")

    def frame_embedding(self, pooled, frames: int, clip_frames: int, frame_start=None) -> jax.Array:
        """The per-frame term the forward pass adds to the embedding of a level with `frames` frames,
        for an input of `clip_frames` frames starting at `frame_start` (B,) of a longer clip
        (None: counted from the input's start); pooled (B, text channels) -> (B, frames, emb)."""
        module = self.temporal_frame_embedding
        return module(pooled, module.positions(frames, clip_frames, frame_start))

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
    def __call__(self, x, logsnr, text=None, text_mask=None, *, image_mode: bool = False, aug_logsnr=None,
                 frame_start=None):
        """Predicts the diffusion target for noisy video `x` (B, T, H, W, C) at noise level `logsnr` (B,).

        `text` (B, L, text_dim) and `text_mask` (B, L) are the frozen text-encoder token embeddings;
        None means the null prompt. With `model.conditioning_channels` set, the last channels of `x`
        are the conditioning video (and mask); with `model.aug_conditioning`, `aug_logsnr` (B,) is the
        noise level of the augmentation applied to that conditioning (SSR). `frame_start` (B,) is the
        first frame of this window in a longer clip (model.temporal.frame_position='global': the frame
        embedding then reads each frame's place in the long clip; None: 0). Returns (B, T, H, W,
        model.out_channels): the prediction, then with `learned_variance` IF's variance channels.
        """
        cfg = self.cfg
        dt = DTYPES[cfg.dtype]
        b, frames = x.shape[:2]
        if text is None:
            text = jnp.zeros((b, 1, cfg.text_dim), dt)
            text_mask = jnp.zeros((b, 1), bool)
        self._check_inputs(x, logsnr, text, text_mask, image_mode, aug_logsnr)
        self._check_frame_start(frame_start, b)
        temporal = cfg.temporal and not image_mode
        clip_frames = frames

        text = text.astype(dt)
        text_tokens = self.text_proj(text if self.text_norm is None else self.text_norm(text))
        keep = text_mask.astype(dt)[..., None]
        pooled = (text_tokens * keep).sum(1) / jnp.maximum(keep.sum(1), 1.0)
        text_emb = self.text_pool(text, text_mask) if cfg.deepfloyd_if else self.text_pool(pooled)
        emb = self.noise_embedding(logsnr) + text_emb
        if self.aug_embedding is not None:
            emb = emb + self.aug_embedding(aug_logsnr)

        per_frame = {}

        def conditioning(n_frames):
            if n_frames not in per_frame:
                rep = lambda a: jnp.repeat(a, n_frames, axis=0)  # noqa: E731
                frame_emb = rep(emb)
                if temporal and self.temporal_frame_embedding is not None:  # frames are folded batch-major
                    frame_emb = frame_emb + self.frame_embedding(pooled, n_frames, clip_frames, frame_start).reshape(
                        frame_emb.shape)
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
                h = self._run(self.downsamples[lv], h, conditioning(frames)[0])
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
                h = self._run(self.upsamples[lv - 1], h, conditioning(frames)[0])
                if temporal and (lv - 1) in cfg.temporal_downsample_levels:
                    h, frames = self._temporal(self.temporal_upsamples[str(lv - 1)], h, b)

        out = unpatchify(self.out_conv(cfg.activation(self.out_norm(h))), cfg.patch_size)
        return out.reshape(b, -1, *out.shape[1:]).astype(jnp.float32)


def training_frame_starts(cfg: UNetConfig, rng: jax.Array, batch: int, frames: int) -> Optional[jax.Array]:
    """(batch,) int32 random first frames, for a model whose frame embedding counts from a long clip's
    start (model.temporal.frame_position='global'): each training clip plays a window of a clip of up
    to model.temporal.max_clip_frames frames, at a start drawn uniformly from the multiples of the
    temporal downsampling that keep it inside, so every window position a sampler asks for was seen.
    None (every clip at start 0, the 'clip' positions) for any other model or a max_clip_frames not
    longer than the clip."""
    if cfg.frame_positions != "global" or cfg.temporal_max_clip_frames <= frames:
        return None
    factor = cfg.frame_factor
    return jax.random.randint(rng, (batch,), 0, (cfg.temporal_max_clip_frames - frames) // factor + 1) * factor


def build_unet(model_config, *, seed: int = 0, temporal: Optional[bool] = None, mesh=None, rules=None) -> UNet:
    """Builds the U-Net from `config.model` (sharded over `mesh` when given).

    `temporal` overrides `model.temporal.enabled` (False: the T2I U-Net of the same backbone).
    """
    cfg = UNetConfig.from_config(model_config)
    if temporal is not None:
        cfg = dataclasses.replace(cfg, temporal=temporal)
    return create_sharded(lambda key: UNet(cfg, rngs=Rngs(key)), seed, mesh, rules)
