"""Where the paper-scale train step spends its time: each block of the STUNet, forward and backward,
compiled for one TPU chip on this CPU machine, with the TPU compiler's estimate.

    python benchmarks/block_costs.py [--config=configs/stunet_paper.py] [--topology=v5p:2x2x2] \
        [--variant=default] [--remat=none] [--blocks="L0 temporal conv,L0 res 512"] [--config.model.x=...]

The whole step's estimate (`--mode=compile_report`) says how fast; this says why. For every block
type at every level it compiles the gradient of one block (frozen spatial blocks: with respect to
their input only, like the train step; temporal blocks: input and parameters) for one clip on one
chip, and prints FLOPs, bytes accessed, the compiler's estimated seconds and implied MFU, and the
share of the whole network's estimated time (blocks times how often the U-Net uses them). Blocks far
below the step's MFU are memory-bound: the place to cut. `--variant` swaps in another formulation of
the norms or temporal convolutions (benchmarks/block_variants.py), `--remat` wraps each block in
jax.checkpoint, `--blocks` keeps the blocks whose names contain one of the given strings: the
one-choice-at-a-time comparisons of the README's "Scale" section. Estimates, not measurements.
"""
import dataclasses
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the TPU programs come from topology descriptions

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from block_variants import VARIANTS  # noqa: E402
from lumiere_jax.models import unet as unet_lib  # noqa: E402
from lumiere_jax.models.rngs import Rngs  # noqa: E402
from lumiere_jax.models.temporal import (  # noqa: E402
    TemporalAttention, TemporalConvBlock, TemporalDownsample, TemporalUpsample,
)
from lumiere_jax.train.compile_report import tpu_slice  # noqa: E402
from lumiere_jax.train.metrics import peak_tflops  # noqa: E402

config_flags.DEFINE_config_file("config", "configs/stunet_paper.py", "Model config.")
flags.DEFINE_string("topology", "v5p:2x2x2", "TPU topology whose first chip compiles each block.")
flags.DEFINE_enum("variant", "default", list(VARIANTS), "Formulation of the norms / temporal convs.")
flags.DEFINE_enum("remat", "none", list(unet_lib.REMAT_POLICIES), "Rematerialisation policy around each block.")
flags.DEFINE_list("blocks", [], "Only blocks whose names contain one of these strings (default: all).")
FLAGS = flags.FLAGS


@dataclasses.dataclass
class Block:
    name: str
    count: int  # how often one forward pass of the U-Net runs it
    make: callable  # rngs -> module
    inputs: tuple  # ShapeDtypeStructs of the call's arguments, the first one differentiated
    trained: bool  # temporal (parameters get gradients) or frozen spatial


def blocks(cfg: unet_lib.UNetConfig, frames: int, size: int, text_len: int) -> list[Block]:
    """The STUNet's blocks at the shapes one clip gives them, with how often each runs (the imagen block set)."""
    if cfg.deepfloyd_if or cfg.temporal_conditioned_convs or not cfg.temporal:
        raise SystemExit("block_costs.py lays out a STUNet of the imagen block set without conditioned temporal "
                         "convs (configs/stunet_paper.py); use --mode=compile_report for other models")
    dt, chs, emb, k = unet_lib.DTYPES[cfg.dtype], cfg.level_channels, cfg.embedding_dim, cfg.temporal_conv_kernel
    sds = lambda *s, d=dt: jax.ShapeDtypeStruct(s, d)  # noqa: E731
    out, t, hw = [], frames, size

    def res(name, count, c_in, c_out):  # frames folded into the batch, as the U-Net calls its spatial blocks
        out.append(Block(f"L{lv} res {c_in}->{c_out} ({name})", count,
                         lambda r: unet_lib.res_block(cfg, c_in, c_out, r), (sds(t, hw, hw, c_in), sds(t, emb)), False))

    for lv, ch in enumerate(chs):
        last, reps = lv == len(chs) - 1, cfg.res_blocks(lv)
        prev = chs[lv - 1] if lv else cfg.base_channels  # the input of the level, and its last skip's width
        nxt = ch if last else chs[lv + 1]  # what comes up from the level below
        res("down, first", 1, prev, ch)
        if reps > 1:
            res("down", reps - 1, ch, ch)
        for i, c_in in enumerate([nxt + ch] + [2 * ch] * (reps - 1) + [ch + prev]):
            res(f"up {i}", 1, c_in, ch)
        if lv in cfg.attention_levels:
            out.append(Block(f"L{lv} spatial attention {ch}", 2 * reps + 1 + last,
                             lambda r, c=ch: unet_lib.spatial_attention(cfg, c, r),
                             (sds(t, hw, hw, ch), sds(t, text_len, chs[-1]), sds(t, text_len, d=jnp.bool_)), False))
        if last:
            res("mid", 2, ch, ch)
            out.append(Block(f"L{lv} temporal attention {ch}", cfg.temporal_attention_depth,
                             lambda r, c=ch: TemporalAttention(c, cfg.temporal_attention_head_dim,
                                                               cfg.temporal_max_relative_distance, r, dt),
                             (sds(1, t, hw, hw, ch),), True))
            break
        out.append(Block(f"L{lv} temporal conv block {ch}", 2 * reps + 1,
                         lambda r, c=ch: TemporalConvBlock(c, k, cfg.norm_groups, r, dt),
                         (sds(1, t, hw, hw, ch),), True))
        out.append(Block(f"L{lv} downsample {ch}", 1, lambda r, c=ch: unet_lib.downsample(cfg, c, r),
                         (sds(t, hw, hw, ch),), False))
        out.append(Block(f"L{lv} upsample {nxt}", 1, lambda r, c=nxt: unet_lib.upsample(cfg, c, r),
                         (sds(t, hw // 2, hw // 2, nxt),), False))
        if lv in cfg.temporal_downsample_levels:  # after the spatial downsampling; the upsampling after the spatial one
            out.append(Block(f"L{lv} temporal down {ch}", 1, lambda r, c=ch: TemporalDownsample(c, k, r, dt),
                             (sds(1, t, hw // 2, hw // 2, ch),), True))
            out.append(Block(f"L{lv} temporal up {nxt}", 1, lambda r, c=nxt: TemporalUpsample(c, k, r, dt),
                             (sds(1, t // 2, hw, hw, nxt),), True))
            t //= 2
        hw //= 2
    return out


def block_cost(block: Block, device, remat: str = "none") -> dict:
    """Compiles d(sum(out * cotangent)) for one block on `device`; returns the compiler's figures."""
    module = nnx.eval_shape(lambda: block.make(Rngs(0)))
    graphdef, params = nnx.split(module)
    apply = lambda p, *args: nnx.merge(graphdef, p)(*args)  # noqa: E731
    if remat != "none":
        apply = jax.checkpoint(apply, policy=unet_lib.REMAT_POLICIES[remat])

    def loss(p, x, *rest):
        y = apply(p, x, *rest).astype(jnp.float32)
        return jnp.sum(y * jnp.cos(y))  # a cotangent that depends on y

    argnums = (0, 1) if block.trained else 1
    on_chip = jax.sharding.SingleDeviceSharding(device)
    args = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=on_chip), (params, *block.inputs))
    cost = jax.jit(jax.grad(loss, argnums=argnums)).lower(*args).compile().cost_analysis() or {}
    return {"flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0),
            "seconds": cost.get("optimal_seconds", 0.0)}


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)
    VARIANTS[FLAGS.variant]()
    config = FLAGS.config
    cfg = unet_lib.UNetConfig.from_config(config.model)
    tpu = tpu_slice(FLAGS.topology)
    peak = peak_tflops(tpu.generation) * 1e12
    rows, total_s, total_f = [], 0.0, 0.0
    chosen = [b for b in blocks(cfg, config.data.num_frames, config.data.resolution, config.text.max_length)
              if not FLAGS.blocks or any(name in b.name for name in FLAGS.blocks)]
    print(f"variant {FLAGS.variant}, remat {FLAGS.remat}, {FLAGS.topology}, one clip per chip")
    for block in chosen:
        c = block_cost(block, tpu.devices[0], FLAGS.remat)
        if c["seconds"] <= 0:  # libtpu answers -3000 s for generations it cannot estimate (v6e here)
            raise SystemExit(f"{FLAGS.topology}: the TPU compiler gives no run-time estimate (optimal_seconds="
                             f"{c['seconds']:g}) for this generation; try a v5p or v4 topology")
        total_s += c["seconds"] * block.count
        total_f += c["flops"] * block.count
        rows.append((block, c))
        mfu = c["flops"] / (c["seconds"] * peak)
        print(f"{block.name:40s} x{block.count}  {c['flops'] / 1e12:7.3f} TFLOP  {c['bytes'] / 2**30:7.2f} GiB  "
              f"{c['seconds'] * 1e3:8.2f} ms  MFU {mfu:4.0%}", flush=True)
    what = "the U-Net" if not FLAGS.blocks else "the chosen blocks"
    print(f"\nsum over {what} (one clip, forward + backward): {total_f / 1e12:.1f} TFLOP, {total_s:.3f} s, "
          f"MFU {total_f / (total_s * peak):.0%} (the compiler's estimate)")
    print("| block | runs per pass | TFLOP | GiB accessed | ms, estimate | MFU | share of time |\n"
          "|---|---|---|---|---|---|---|")
    for block, c in sorted(rows, key=lambda r: -r[1]["seconds"] * r[0].count):
        mfu = c["flops"] / (c["seconds"] * peak)
        print(f"| {block.name} | {block.count} | {c['flops'] / 1e12:.3f} | {c['bytes'] / 2**30:.2f} | "
              f"{c['seconds'] * 1e3:.2f} | {mfu:.0%} | {c['seconds'] * block.count / total_s:.1%} |")


if __name__ == "__main__":
    app.run(main)
