"""`--mode=compile_report`: a config's train step compiled for a TPU slice, ahead of time, on a CPU machine.

With libtpu installed (the `tpu-aot` extra), `jax.experimental.topologies` describes the devices of
a TPU slice that is not there. The train step is lowered for a mesh of those devices with every
argument abstract (shapes, dtypes and shardings; no weight is ever built) and compiled by the real
TPU compiler, which reports the memory each device needs and the FLOPs it runs. That answers "does
the paper-scale model train on this slice, at this batch?" before anyone pays for the slice. The TPU
compiler refuses a program that exceeds a chip's HBM (RESOURCE_EXHAUSTED); that is reported as not
fitting, not raised, so `compile.find_max_batch` can search the largest batch that fits.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from lumiere_jax.diffusion import sampler_settings_from_config
from lumiere_jax.parallel import batch_shard_count, logical_axis_rules, mesh_from_config, state_shardings
from lumiere_jax.parallel.platforms import describe_absent_tpu_host
from lumiere_jax.text.checkpoint import abstract_encoder, count_parameters
from lumiere_jax.text.conventions import encodes_null_prompt
from lumiere_jax.text.encoder import encoder_config
from lumiere_jax.train.metrics import peak_tflops
from lumiere_jax.train.optimizer import learning_rate_schedule
from lumiere_jax.train.step import make_train_step, step_inputs
from lumiere_jax.train.trainer import FrozenEncoder, abstract_train_state, compile_ahead, compile_step

# HBM per chip (GiB) by TPU generation, the prefix of a topology name such as "v5p:2x2x2".
HBM_GIB = {"v4": 32.0, "v5e": 16.0, "v5p": 95.0, "v6e": 32.0}
GIB = 2**30


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """One train step with abstract arguments: what `compile_step` needs, nothing allocated."""

    step: Callable  # step(state, batch[, encoder state]) -> (state, metrics)
    state: Any  # the train state as ShapeDtypeStructs
    shardings: Any  # NamedShardings of `state` on the mesh
    batch: dict  # the step's inputs as ShapeDtypeStructs
    encoder: Optional[FrozenEncoder] = None  # with text.encode_in_step: the T5 encoder, abstract


@dataclasses.dataclass(frozen=True)
class Slice:
    """A TPU slice described by libtpu, without the hardware."""

    topology: str
    generation: str
    devices: list
    chips: int
    hbm_gib_per_device: float


def tpu_slice(topology: str, num_slices: int = 1, hbm_gib: float = 0.0) -> Slice:
    """The compile-only devices of `topology` (e.g. "v5p:2x2x2"), `num_slices` times over (multi-slice).

    HBM per device is the chip's (or `hbm_gib` when > 0) divided by the devices per chip: libtpu
    describes v4 chips as two devices (one per TensorCore), v5p as one (megacore).
    """
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError("compile_report needs libtpu to compile for TPU on this machine: "
                         "pip install -e '.[tpu-aot]'")
    if ":" not in topology:
        raise ValueError(f"compile.topology={topology!r} must be GENERATION:AxB[xC], the chip grid: e.g. v5p:2x2x2 "
                         "(a v5p-16: 8 chips, 16 TensorCores) or v6e:2x4 (a v6e-8)")
    generation = topology.split(":")[0].lower()
    if hbm_gib <= 0 and generation not in HBM_GIB:
        raise ValueError(f"compile.topology={topology!r}: unknown TPU generation {generation!r}; use one of "
                         f"{sorted(HBM_GIB)} (e.g. v5p:2x2x2, v6e:2x4) or set compile.hbm_gib for another chip")
    from jax.experimental import topologies

    describe_absent_tpu_host()
    # Compile-only: no chip is touched, so concurrent compile jobs must not lock each other out of libtpu.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", num_slices=num_slices).devices
    except jax.errors.JaxRuntimeError as e:
        raise ValueError(f"compile.topology={topology!r} is not a TPU topology libtpu knows "
                         f"(GENERATION:AxB[xC], e.g. v5p:2x2x2 or v6e:2x4): {e}") from None
    chips = len({(getattr(d, "slice_index", 0), tuple(d.coords)) for d in devices})
    per_chip = hbm_gib if hbm_gib > 0 else HBM_GIB[generation]
    return Slice(topology, generation, list(devices), chips, per_chip * chips / len(devices))


def abstract_batch(config, batch_size: int) -> dict:
    """The step inputs of a global batch of `batch_size`, as the data pipeline would deliver them."""
    data, text = config.data, config.text
    frames, size = data.num_frames, data.resolution
    channels = config.model.in_channels + config.model.conditioning_channels
    batch = {"video": jax.ShapeDtypeStruct((batch_size, frames, size, size, channels), jnp.float32),
             "is_image": jax.ShapeDtypeStruct((batch_size,), jnp.bool_),
             "text_mask": jax.ShapeDtypeStruct((batch_size, text.max_length), jnp.bool_)}
    if data.hires_resolution:
        hires = data.hires_resolution
        batch["video_hires"] = jax.ShapeDtypeStruct((batch_size, frames, hires, hires, config.model.in_channels),
                                                    jnp.float32)
    if text.encode_in_step:
        batch["text_tokens"] = jax.ShapeDtypeStruct((batch_size, text.max_length), jnp.int32)
    else:
        batch["text_embeddings"] = jax.ShapeDtypeStruct((batch_size, text.max_length, config.model.text_dim),
                                                        jnp.bfloat16)
    return step_inputs(batch, config)


def train_program(config, mesh, rules, batch_size: int) -> TrainProgram:
    """The train step `--mode=train` would compile for `config`, with abstract state and batch.

    The state is the trainer's own `abstract_train_state` (shapes only: the shardings come from the
    logical axes).
    """
    graphdef, state = nnx.split(abstract_train_state(config))
    # IF conventions: the encoded empty prompt is a constant of the step; its value does not change the program
    null_text = jnp.zeros((config.text.max_length, config.model.text_dim)) if encodes_null_prompt(config.text) else None
    step = make_train_step(graphdef, config, learning_rate_schedule(config.train), null_text=null_text)
    encoder = None
    if config.text.encode_in_step:  # the frozen encoder runs in the step: its weights and FLOPs count
        encoder_graphdef, weights = nnx.split(abstract_encoder(encoder_config(config.text)))
        encoder = FrozenEncoder(encoder_graphdef, weights, state_shardings(weights, mesh, rules))
    return TrainProgram(step, state, state_shardings(state, mesh, rules), abstract_batch(config, batch_size), encoder)


def batch_unit(mesh, rules, microbatches: int) -> int:
    """The global batch must be a multiple of this: the batch's shards times the micro-batches."""
    return batch_shard_count(mesh, rules) * microbatches


def memory_gib(compiled) -> dict:
    """Per-device memory of a compiled program; `total` counts donated (aliased) buffers once."""
    m = compiled.memory_analysis()
    fields = {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
              "aliased": m.alias_size_in_bytes, "temporaries": m.temp_size_in_bytes,
              "generated_code": m.generated_code_size_in_bytes}
    fields["total"] = (fields["arguments"] + fields["outputs"] - fields["aliased"] + fields["temporaries"]
                       + fields["generated_code"])
    return {k: round(v / GIB, 3) for k, v in fields.items()}


def try_compile(compile_fn: Callable[[], Any]) -> tuple[Any, Optional[str]]:
    """(compile_fn(), None), or (None, the compiler's reason) when the program does not fit in HBM.

    The TPU compiler checks HBM itself and fails with RESOURCE_EXHAUSTED; any other error is a
    real problem and propagates.
    """
    try:
        return compile_fn(), None
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        return None, str(e).strip().splitlines()[0]


def _significant(x: float) -> float:
    return float(f"{x:.4g}")


def compile_for_batch(config, tpu: Slice, mesh, rules, batch_size: int) -> dict:
    """Compiles the train step at a global batch; the result says whether it fits the slice's HBM."""
    program = train_program(config, mesh, rules, batch_size)
    result = {"global_batch": batch_size, "batch_per_chip": round(batch_size / tpu.chips, 3)}
    out, error = try_compile(lambda: compile_step(program.step, program.state, program.shardings, program.batch,
                                                  mesh, rules, program.encoder))
    if error is not None:
        return {**result, "fits": False, "compile_error": error}
    compiled, info = out
    return {**result, **compiled_costs(memory_gib(compiled), info, tpu, batch_size)}


def compiler_estimate(info: dict, peak: Optional[float]) -> Optional[dict]:
    """The step time the TPU compiler's cost analysis predicts (`optimal_seconds`) and the MFU it
    implies. Every operation at its roofline with perfect overlap: optimistic by construction, a
    floor on the step time, never a measurement."""
    seconds = info.get("optimal_seconds")
    if not seconds or not peak:
        return None
    return {"step_seconds": _significant(seconds), "mfu": _significant(info["flops_per_device"] / (seconds * peak * 1e12)),
            "source": "TPU compiler cost analysis (optimal_seconds): an estimate, not a measurement"}


def largest_fitting(fits: Callable[[int], bool], limit: int, guess: int = 1) -> int:
    """The largest k in [1, limit] with fits(k), for `fits` true up to some k* and false after; 0 if none.

    Gallops away from `guess` (up while everything fits, down while nothing does, doubling the
    step) and bisects once both a fitting and a failing k are known: a good guess costs about two
    probes, a bad one O(log limit). Each probe is a compile, minutes at paper scale.
    """
    good, bad, step = 0, limit + 1, 1
    k = min(max(guess, 1), limit)
    while bad - good > 1:
        if fits(k):
            good = k
        else:
            bad = k
        if bad == limit + 1:
            k, step = min(good + step, limit), step * 2
        elif good == 0:
            k, step = max(bad - step, 1), step * 2
        else:
            k = (good + bad) // 2
    return good


def _guess_units(first: dict, units: int, hbm_gib: float) -> int:
    """Batch units that should fill HBM, assuming temporaries grow linearly with the batch."""
    if "memory_per_device_gib" not in first:
        return max(units // 2, 1)
    m = first["memory_per_device_gib"]
    per_unit = m["temporaries"] / units
    fixed = m["total"] - m["temporaries"]
    return int((hbm_gib - fixed) / per_unit) if per_unit > 0 else units


def find_max_batch(config, tpu: Slice, mesh, rules, unit: int, first: dict) -> dict:
    """Searches the largest global batch (a multiple of `unit`) that fits; `first` is the config's batch."""
    limit = max(int(config.compile.max_batch_per_chip * tpu.chips // unit), 1)
    tried = {first["global_batch"] // unit: first}
    bar = tqdm(desc="find_max_batch (one compile per try)", unit="compile", file=sys.stderr, dynamic_ncols=True)

    def fits(units: int) -> bool:
        if units not in tried:
            tried[units] = compile_for_batch(config, tpu, mesh, rules, units * unit)
            bar.update(1)
            bar.set_postfix(global_batch=units * unit, fits=tried[units]["fits"])
        return tried[units]["fits"]

    try:
        best = largest_fitting(fits, limit, _guess_units(first, first["global_batch"] // unit, tpu.hbm_gib_per_device))
    finally:
        bar.close()
    return {"max_global_batch": best * unit, "max_batch_per_chip": round(best * unit / tpu.chips, 3),
            "search_limit_per_chip": config.compile.max_batch_per_chip,
            "tries": [{k: v for k, v in tried[u].items() if k in ("global_batch", "fits", "memory_per_device_gib",
                                                                  "compile_error")} for u in sorted(tried)]}


def text_summary(text) -> dict:
    """Where the step's text condition comes from; with the encoder in the step, its size (its weights
    are arguments of the compiled program and its forward pass is in the FLOPs)."""
    if not text.encode_in_step:
        return {"source": "precomputed embeddings"}
    return {"source": "T5 encoder in the step (frozen)", "encoder": text.encoder, "variant": text.variant,
            "encoder_parameters": count_parameters(encoder_config(text))}


PROGRAMS = ("train", "denoise_step")


def compiled_costs(memory: dict, info: dict, tpu: Slice, rows: int) -> dict:
    """What a compiled program costs per device and whether it fits: memory, FLOPs, time at peak and the
    compiler's estimate; `rows` (clips per step) gives the FLOPs per clip."""
    flops = info["flops_per_device"]
    peak = peak_tflops(tpu.generation)
    return {"fits": memory["total"] <= tpu.hbm_gib_per_device, "compile_seconds": info["compile_seconds"],
            "memory_per_device_gib": memory, "hbm_headroom_gib": round(tpu.hbm_gib_per_device - memory["total"], 3),
            "flops_per_device": flops, "flops_per_step": flops * len(tpu.devices),
            "bytes_accessed_gib_per_device": _significant(info["bytes_accessed_per_device"] / GIB),
            "tflops_per_clip": _significant(flops * len(tpu.devices) / rows / 1e12),
            "step_seconds_at_peak": _significant(flops / (peak * 1e12)) if peak else None,
            "compiler_estimate": compiler_estimate(info, peak)}


def denoise_step_report(config, tpu: Slice, mesh, rules) -> dict:
    """One guided denoising step of `config`'s stage at sample.batch_size clips, and the sampling time per
    clip it implies at sample.num_steps (the compiler's estimate)."""
    if config.compile.find_max_batch:
        raise ValueError("compile.find_max_batch searches train batches; with compile.program='denoise_step' set "
                         "sample.batch_size instead")
    from lumiere_jax.sample.denoise_program import denoise_program

    batch = config.sample.batch_size
    resample = sampler_settings_from_config(config.sample).resample  # takes of each step: model calls per step
    program = denoise_program(config, mesh, rules, batch)
    print(f"compiling one denoising step for {config.compile.topology} ({len(tpu.devices)} devices) at {batch} "
          f"clips ({program.rows_per_step} model rows); minutes at paper scale", file=sys.stderr)
    jitted = jax.jit(program.fn, in_shardings=program.in_shardings)
    out, error = try_compile(lambda: compile_ahead(jitted, program.args, mesh))
    report = {"program": "denoise_step", "sample_batch": batch, "frames": program.frames,
              "windows_per_clip": program.windows, "rows_per_step": program.rows_per_step,
              "rows_per_model_call": program.rows_per_call, "sampling_passes_per_clip": program.passes,
              "guidance_scale": config.sample.guidance_scale, "num_steps": config.sample.num_steps,
              "sampler": config.sample.sampler, "resample": resample}
    if error is not None:
        return {**report, "fits": False, "compile_error": error}
    compiled, info = out
    if config.sample.windows_in_sequence and program.windows > 1:
        # XLA's cost analysis counts the body of the loop over windows once: scale it by the trip count.
        # The body is the model call; what lies outside (guidance, thresholding, merging windows) is then
        # counted n times too, a small over-estimate (0.4% on the tiny test config).
        info = {**info, "flops_per_device": info["flops_per_device"] * program.windows,
                "bytes_accessed_per_device": info["bytes_accessed_per_device"] * program.windows}
        if "optimal_seconds" in info:
            info["optimal_seconds"] *= program.windows
        report["costs_scaled_by_windows"] = program.windows
    report.update(compiled_costs(memory_gib(compiled), info, tpu, batch))
    estimate = report["compiler_estimate"]
    if estimate:
        per_clip = estimate["step_seconds"] * config.sample.num_steps * resample * program.passes / batch
        report["sampling_estimate"] = {
            "seconds_per_clip": _significant(per_clip), "chip_seconds_per_clip": _significant(per_clip * tpu.chips),
            "source": "num_steps x resample x passes x the compiler's step estimate / clips per step: an estimate, "
                      "not a measurement"}
    return report


def compile_report(config) -> dict:
    """The JSON report of `config`'s train step (or, with compile.program='denoise_step', one denoising step
    of sampling) on the TPU slice `config.compile.topology`."""
    c = config.compile
    program = c.get("program", "train")
    if program not in PROGRAMS:
        raise ValueError(f"compile.program={program!r} is not one of {PROGRAMS}")
    tpu = tpu_slice(c.topology, int(c.num_slices), float(c.hbm_gib))
    mesh = mesh_from_config(config.mesh, tpu.devices)
    rules = logical_axis_rules(config.mesh.rules)
    head = {"topology": c.topology, "num_slices": int(c.num_slices), "device_kind": tpu.devices[0].device_kind,
            "chips": tpu.chips, "devices": len(tpu.devices), "hbm_gib_per_device": round(tpu.hbm_gib_per_device, 3),
            "mesh": dict(mesh.shape), "model": "STUNet" if config.model.temporal.enabled else "T2I U-Net",
            "resolution": config.data.hires_resolution if config.ssr.enabled else config.data.resolution,
            "compute_dtype": config.model.dtype}
    if program == "denoise_step":
        return {**head, **denoise_step_report(config, tpu, mesh, rules),
                "flops_source": "XLA cost analysis of the compiled TPU program, per device"}
    unit = batch_unit(mesh, rules, config.train.microbatches)
    batch = config.data.batch_size
    if batch < 1 or batch % unit:
        raise ValueError(f"data.batch_size={batch} must be a positive multiple of {unit} (the mesh's batch shards "
                         f"{dict(mesh.shape)} times train.microbatches={config.train.microbatches})")
    print(f"compiling the train step for {c.topology} x{c.num_slices} ({len(tpu.devices)} devices) at global batch "
          f"{batch}; minutes at paper scale", file=sys.stderr)
    first = compile_for_batch(config, tpu, mesh, rules, batch)
    report = {
        **head, "program": "train", "trainable": config.train.trainable, "frames": config.data.num_frames,
        "remat": config.model.remat, "text": text_summary(config.text), **first,
        "flops_source": "XLA cost analysis of the compiled TPU program, per device (recompute included)",
    }
    if c.find_max_batch:
        report["max_batch"] = find_max_batch(config, tpu, mesh, rules, unit, first)
    return report
