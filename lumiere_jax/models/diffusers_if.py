"""DeepFloyd IF stage I / II diffusers checkpoints -> the `deepfloyd_if` U-Net / STUNet, exactly.

A diffusers `UNet2DConditionModel` directory (`config.json` with `_class_name` and
`diffusion_pytorch_model.safetensors`, or its sharded `.index.json`) loads through
`train.init_from` (see `weights.load_weights`): every spatial parameter (and IF-II's conditioning
input) is read from the safetensors memory map straight into the sharding the model's parameter
already has, one device slice at a time, as the T5 reader does; the temporal parameters keep
their identity initialisation. The diffusers config is checked against `config.model` first
(`model_config_from_diffusers` says what ours must be), then every tensor: one the model lacks,
one it does not use, or one of the wrong shape is named.

Name map (diffusers -> ours; torch Linear [out, in] -> [in, out], Conv [out, in, kh, kw] ->
[kh, kw, in, out], norm weight -> scale; up_blocks run coarse to fine, our `up` is by level):

    time_embedding.linear_{1,2}            noise_embedding.fc{1,2}
    class_embedding.linear_{1,2}           aug_embedding.fc{1,2}                (IF-II noise_level)
    add_embedding.{norm1,proj,norm2}       text_pool.{norm1,proj,norm2}
    add_embedding.pool.{q,k,v}_proj        text_pool.{q,k,v}
    add_embedding.pool.positional_embedding  text_pool.position               [1, D] -> [D]
    encoder_hid_proj                       text_proj
    conv_in                                input_conv (+ cond_input: IF-II's low-res channels, no bias)
    down_blocks.l.resnets.i                down.l.blocks.i
    down_blocks.l.attentions.i             down.l.attns.i
    down_blocks.l.downsamplers.0           downsamples.l
    mid_block.resnets.{0,1}, attentions.0  mid_block{1,2}, mid_attn
    up_blocks.j.{resnets,attentions}.i     up.(L-1-j).{blocks,attns}.i
    up_blocks.j.upsamplers.0               upsamples.(L-2-j)
    conv_norm_out, conv_out                out_norm, out_conv
  in res blocks: norm1, conv1, time_emb_proj -> emb_proj, norm2, conv2, conv_shortcut -> skip;
  in attention: group_norm -> norm, norm_cross -> text_norm, to_q/to_k/to_v -> q/k/v,
  add_k_proj/add_v_proj -> text_k/text_v, to_out.0 -> out.
"""
from __future__ import annotations

import json
import math
import pathlib

from flax import nnx
from tqdm import tqdm

from lumiere_jax.models import param_groups
from lumiere_jax.text.checkpoint import (
    CheckpointError, LazyArray, LayerOf, Sliced, Source, Transposed, mapped, path_name, place,
)
from lumiere_jax.text.hf_checkpoint import read_safetensors

CLASS_NAME = "UNet2DConditionModel"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
DOWN_BLOCKS = ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")  # (no attention, attention)
UP_BLOCKS = ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
MID_BLOCK = "UNetMidBlock2DSimpleCrossAttn"
# Settings every IF U-Net has, which the deepfloyd_if block set builds in (diffusers key: value).
FIXED = {"act_fn": "gelu", "resnet_time_scale_shift": "scale_shift", "cross_attention_norm": "group_norm",
         "addition_embed_type": "text", "flip_sin_to_cos": True, "freq_shift": 0, "conv_in_kernel": 3,
         "conv_out_kernel": 3, "norm_eps": 1e-5, "upcast_attention": False, "class_embeddings_concat": False,
         "mid_block_type": MID_BLOCK, "dual_cross_attention": False, "use_linear_projection": False}

_MODULES = {  # our top-level module -> diffusers
    "noise_embedding": "time_embedding", "aug_embedding": "class_embedding", "text_pool": "add_embedding",
    "text_proj": "encoder_hid_proj", "out_norm": "conv_norm_out", "out_conv": "conv_out",
    "mid_block1": "mid_block.resnets.0", "mid_block2": "mid_block.resnets.1", "mid_attn": "mid_block.attentions.0",
}
_INNER = {  # our sub-module -> diffusers (res blocks, attention, embeddings, text pooling)
    "emb_proj": "time_emb_proj", "skip": "conv_shortcut", "fc1": "linear_1", "fc2": "linear_2",
    "text_norm": "norm_cross", "q": "to_q", "k": "to_k", "v": "to_v", "text_k": "add_k_proj",
    "text_v": "add_v_proj", "out": "to_out.0",
}
_POOL = {"q": "pool.q_proj", "k": "pool.k_proj", "v": "pool.v_proj", "position": "pool.positional_embedding"}
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def is_diffusers_unet(path) -> bool:
    """True for a directory whose config.json names a diffusers `UNet2DConditionModel`."""
    config = pathlib.Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == CLASS_NAME
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_diffusers_config(path) -> dict:
    path = pathlib.Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path / 'config.json'} is not a readable diffusers config ({err})") from None
    if config.get("_class_name") != CLASS_NAME:
        raise CheckpointError(f"{path} holds a {config.get('_class_name')!r}, not a diffusers {CLASS_NAME}")
    return config


def _per_level(value, levels: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def model_config_from_diffusers(dcfg: dict) -> dict:
    """The `config.model` values (ours) that a DeepFloyd IF diffusers config means.

    Raises `CheckpointError` for what the deepfloyd_if block set cannot express (another block
    type, a per-level head size, attention in a level's down but not its up blocks, ...).
    """
    problems = [f"{key}={dcfg.get(key)!r} (IF has {value!r})" for key, value in FIXED.items()
                if key in dcfg and dcfg[key] != value]
    down, up = list(dcfg.get("down_block_types", ())), list(dcfg.get("up_block_types", ()))
    channels = list(dcfg.get("block_out_channels", ()))
    levels = len(channels)
    if not levels or len(down) != levels or len(up) != levels:
        problems.append(f"block_out_channels {channels}, down_block_types {down} and up_block_types {up} "
                        "need one entry per level")
    if any(b not in DOWN_BLOCKS for b in down) or any(b not in UP_BLOCKS for b in up):
        problems.append(f"block types {down} / {up} are not IF's {DOWN_BLOCKS} / {UP_BLOCKS}")
    attention = [lv for lv, b in enumerate(down) if b == DOWN_BLOCKS[1]]
    if [lv for lv, b in enumerate(reversed(up)) if b == UP_BLOCKS[1]] != attention:
        problems.append(f"attention levels differ between down_block_types {down} and up_block_types {up}")
    heads = set(_per_level(dcfg.get("attention_head_dim", 8), levels))
    cross_only = set(_per_level(dcfg.get("only_cross_attention", False), levels))
    if len(heads) != 1 or len(cross_only) != 1:
        problems.append(f"attention_head_dim={dcfg.get('attention_head_dim')!r} and only_cross_attention="
                        f"{dcfg.get('only_cross_attention')!r} must be one value for every level")
    if dcfg.get("resnet_out_scale_factor", 1.0) != dcfg.get("mid_block_scale_factor", 1.0):
        problems.append("resnet_out_scale_factor and mid_block_scale_factor differ (IF has them equal)")
    # The embedding's activation runs once: in every res block (IF-I) or once after the sum (IF-II).
    if (dcfg.get("time_embedding_act_fn") is not None) != bool(dcfg.get("resnet_skip_time_act", False)):
        problems.append("time_embedding_act_fn and resnet_skip_time_act must be set together (IF-II) or not at all")
    if dcfg.get("time_embedding_act_fn") not in (None, "gelu"):
        problems.append(f"time_embedding_act_fn={dcfg['time_embedding_act_fn']!r} is not IF's gelu")
    if dcfg.get("class_embed_type") not in (None, "timestep"):
        problems.append(f"class_embed_type={dcfg['class_embed_type']!r}: IF-II embeds its noise_level as a 'timestep'")
    if dcfg.get("cross_attention_dim") != (channels[-1] if channels else None):
        problems.append(f"cross_attention_dim={dcfg.get('cross_attention_dim')} must equal the coarsest "
                        f"block_out_channels ({channels[-1:]})")
    if problems:
        raise CheckpointError("not a DeepFloyd IF U-Net the deepfloyd_if block set can load: " + "; ".join(problems))
    aug = dcfg.get("class_embed_type") == "timestep"
    in_channels = dcfg["out_channels"] // 2 if dcfg.get("out_channels") else dcfg.get("in_channels", 3)
    base = channels[0]
    return {
        "block_set": "deepfloyd_if", "in_channels": in_channels, "patch_size": 1,
        "conditioning_channels": dcfg.get("in_channels", 3) - in_channels, "aug_conditioning": aug,
        "base_channels": base, "channel_mult": [c // base for c in channels],
        "res_blocks_per_level": _per_level(dcfg.get("layers_per_block", 2), levels),
        "attention_levels": attention, "head_dim": heads.pop(), "norm_groups": dcfg.get("norm_num_groups", 32),
        "text_dim": dcfg.get("encoder_hid_dim"), "emb_dim": dcfg.get("time_embedding_dim") or 4 * base,
        "learned_variance": dcfg.get("out_channels") == 2 * in_channels,
        "res_output_scale": float(dcfg.get("resnet_out_scale_factor", 1.0)),
        "text_pool_heads": dcfg.get("addition_embed_type_num_heads", 64),
        "text_only_attention": bool(cross_only.pop()), "lowres_align_corners": aug,
    }


def check_model_config(dcfg: dict, cfg, where: str) -> None:
    """Names every `config.model` value that differs from what the checkpoint at `where` needs."""
    want = model_config_from_diffusers(dcfg)
    have = {key: getattr(cfg, key) for key in want}
    have["channel_mult"], have["res_blocks_per_level"] = list(cfg.channel_mult), [
        cfg.res_blocks(lv) for lv in range(cfg.num_levels)]
    have["attention_levels"] = sorted(cfg.attention_levels)
    wrong = [f"model.{key}={have[key]!r} (needs {value!r})" for key, value in want.items()
             if (have[key] != value if not isinstance(value, float) else not math.isclose(have[key], value))]
    if wrong:
        raise CheckpointError(f"{where} is a DeepFloyd IF U-Net of another shape: " + "; ".join(wrong))


def diffusers_name(path: tuple, levels: int) -> str:
    """Our parameter path (('down', 1, 'attns', 0, 'q', 'kernel')) -> its diffusers tensor name."""
    parts = [str(p) for p in path]
    head = parts[0]
    if head in ("down", "up"):
        lv, kind, i = int(parts[1]), parts[2], parts[3]
        block = f"down_blocks.{lv}" if head == "down" else f"up_blocks.{levels - 1 - lv}"
        prefix, rest = f"{block}.{'resnets' if kind == 'blocks' else 'attentions'}.{i}", parts[4:]
    elif head == "downsamples":
        prefix, rest = f"down_blocks.{parts[1]}.downsamplers.0", parts[2:]
    elif head == "upsamples":
        prefix, rest = f"up_blocks.{levels - 2 - int(parts[1])}.upsamplers.0", parts[2:]
    elif head in ("input_conv", "cond_input"):
        prefix, rest = "conv_in", parts[1:]
    else:
        prefix, rest = _MODULES.get(head, head), parts[1:]
    if head == "text_pool" and rest[0] in _POOL:
        return f"{prefix}.{_POOL[rest[0]]}" + ("" if rest[0] == "position" else f".{_LEAF[rest[-1]]}")
    if len(rest) >= 2 and rest[-2] == "norm":  # our GroupNorm/LayerNorm wrap flax's as `.norm`
        rest = rest[:-2] + rest[-1:]
    names = [_INNER.get(p, "group_norm" if p == "norm" and "attentions" in prefix else p) for p in rest[:-1]]
    return ".".join([prefix, *names, _LEAF.get(rest[-1], rest[-1])])


def _source(path: tuple, name: str, stored: LazyArray, cfg) -> Source:
    """The view of `stored` in our layout for the parameter at `path`."""
    ops = []
    if len(stored.shape) == 4:  # conv [out, in, kh, kw] -> [kh, kw, in, out]
        ops.append(lambda a: Transposed(a, (2, 3, 1, 0)))
        if path[0] in ("input_conv", "cond_input"):
            lo, hi = (0, cfg.in_channels) if path[0] == "input_conv" else (cfg.in_channels, stored.shape[1])
            ops.append(lambda a: Sliced(a, 2, lo, hi))
    elif len(stored.shape) == 2 and path[-1] == "kernel":
        ops.append(lambda a: Transposed(a, (1, 0)))
    elif path[-1] == "position":
        ops.append(lambda a: LayerOf(a, 0, 0))
    return mapped(path_name(path), name, stored, *ops)


def load_diffusers_unet(path, model: nnx.Module) -> str:
    """Loads an IF diffusers checkpoint into `model`'s spatial (and conditioning-input) parameters,
    in place and in the shardings they already have. Returns 'spatial' (temporal ones untouched)."""
    path = pathlib.Path(path).absolute()
    dcfg = read_diffusers_config(path)
    check_model_config(dcfg, model.cfg, str(path))
    tensors = read_safetensors(str(path), SINGLE_FILE, INDEX_FILE, what="diffusers U-Net checkpoint (train.init_from)")
    state = nnx.state(model, nnx.Any(param_groups.SPATIAL, param_groups.CONDITIONING))
    flat = nnx.to_flat_state(state)
    wanted = {p: diffusers_name(p, model.cfg.num_levels) for p, _ in flat}
    missing = sorted({n for n in wanted.values() if n not in tensors})
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} tensor(s) the model needs: {missing[:10]}")
    unexpected = sorted(set(tensors) - set(wanted.values()))
    if unexpected:
        raise CheckpointError(f"{path} has {len(unexpected)} tensor(s) the model does not use: {unexpected[:10]}; "
                              "check model.* against the checkpoint's config.json")
    leaves = []
    for p, variable in tqdm(flat, desc="loading DeepFloyd IF U-Net", unit="tensor", leave=False):
        name, value = wanted[p], variable.get_value()
        source = _source(p, name, tensors[name], model.cfg)
        if source.array.shape != value.shape:
            raise CheckpointError(f"parameter {path_name(p)}: tensor {name!r} of {path} gives shape "
                                  f"{source.array.shape}, the model's is {value.shape}")
        leaves.append((p, variable.replace(value=place(source, value, value.sharding))))
    nnx.update(model, nnx.from_flat_state(leaves))
    return "spatial"
