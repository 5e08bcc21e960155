"""`--mode=train`: the training loop around the jitted step, with checkpoints and metrics.

One code path for 1 CPU, 8 fake devices, a GPU or a TPU pod: the mesh and rules come from the
config, the state is built directly in its shardings, the step is compiled ahead of time (its
memory analysis is logged before the first step) and donated, checkpoints are asynchronous,
and SIGTERM (preemption) saves the current step before exiting.
"""
from __future__ import annotations

import functools
import json
import pathlib
import signal
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from lumiere_jax.models import param_groups
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig
from lumiere_jax.models.weights import load_weights, save_weights
from lumiere_jax.parallel import (
    abstract_sharded, batch_sharding, create_sharded, logical_axis_rules, mesh_from_config, state_shardings,
)
from lumiere_jax.text.conventions import encode_null_prompt, encodes_null_prompt, null_conditioning, unet_mask
from lumiere_jax.train.checkpointing import Checkpointer
from lumiere_jax.train.metrics import MetricWriter, peak_tflops, summarize
from lumiere_jax.train.optimizer import learning_rate_schedule, make_optimizer
from lumiere_jax.train.state import TrainState, trainable_filter
from lumiere_jax.train.step import make_train_step, step_inputs


PREVIEW_FPS = 16.0


def _text_of(batch, config, encoder_state):
    from lumiere_jax.text.conditioning import text_conditioning

    encoder = nnx.merge(*encoder_state) if encoder_state is not None else None
    return text_conditioning(batch, config.text, encoder)


class NonFiniteError(RuntimeError):
    """Too many non-finite updates in a row."""


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (then it checkpoints and exits)."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _train_state_constructor(config) -> Callable[[jax.Array], TrainState]:
    model_cfg = UNetConfig.from_config(config.model)
    trainable_filter(config.train.trainable)  # fail on a bad value before compiling anything
    tx = make_optimizer(config.train)
    return lambda key: TrainState(UNet(model_cfg, rngs=Rngs(key)), tx, config.train.trainable)


def build_train_state(config, mesh, rules) -> TrainState:
    """The train state, created directly in its mesh shardings (nothing lands on one device)."""
    return create_sharded(_train_state_constructor(config), config.seed, mesh, rules)


def abstract_train_state(config) -> TrainState:
    """The train state's structure, shapes, dtypes and logical axes, with no value: nothing is
    compiled, run or allocated (`build_train_state` compiles and runs its initialisation)."""
    return nnx.eval_shape(_train_state_constructor(config), jax.random.key(config.seed))


def restore_train_state(config, mesh, rules, checkpointer: Checkpointer, step: int, batches=None):
    """(graphdef, state, shardings) of the train state saved at `step`, read straight into its mesh
    shardings (and `batches` to where that step left them).

    The state is built abstractly: every value comes from the checkpoint, so nothing is initialised
    (no initialisation program compiled or run, no second copy of the model in memory).
    """
    graphdef, state = nnx.split(abstract_train_state(config))
    shardings = state_shardings(state, mesh, rules)
    return graphdef, checkpointer.restore(step, abstract_sharded(state, shardings), batches), shardings


def initialize_from(ts: TrainState, path: str) -> str:
    """Loads `train.init_from` weights into the model and restarts the EMA from them."""
    kind = load_weights(pathlib.Path(path), ts.model)
    # Copies, not the parameter arrays themselves: the step donates the state, and a buffer that
    # appears twice in a donated tree would be freed twice.
    params = nnx.to_pure_dict(nnx.state(ts.model, ts.wrt))
    nnx.replace_by_pure_dict(ts.ema, jax.tree.map(jnp.copy, params))
    return kind


class FrozenEncoder(NamedTuple):
    """The frozen text encoder of a step that encodes in-step (text.encode_in_step)."""

    graphdef: Any
    weights: Any  # arrays, or ShapeDtypeStructs for a compile-only program
    shardings: Any


def _step_with_encoder(step_fn, encoder_graphdef, state, batch, weights):
    return step_fn(state, batch, (encoder_graphdef, weights))


def compile_step(step_fn, state, shardings, batch, mesh, rules, encoder: Optional[FrozenEncoder] = None):
    """jit with explicit shardings and a donated state, lowered and compiled ahead of time.

    With `encoder`, the compiled program takes its weights as a third argument, not donated
    (`compiled(state, batch, encoder.weights)`): passed in rather than closed over, so that they are
    not baked into the program as constants.
    """
    batch_shardings = {k: batch_sharding(mesh, rules, v.ndim) for k, v in batch.items()}
    in_shardings = (shardings, batch_shardings)
    args = (abstract_sharded(state, shardings), abstract_sharded(batch, batch_shardings))
    if encoder is not None:
        step_fn = functools.partial(_step_with_encoder, step_fn, encoder.graphdef)
        in_shardings += (encoder.shardings,)
        args += (abstract_sharded(encoder.weights, encoder.shardings),)
    jitted = jax.jit(step_fn, in_shardings=in_shardings, out_shardings=(shardings, None), donate_argnums=0)
    compiled, info = compile_ahead(jitted, args, mesh)
    logging.info("train step compiled: %s", json.dumps(info))
    return compiled, info


def compile_ahead(jitted, args, mesh):
    """(compiled, info): `jitted` lowered for `args` (abstract, sharded) and compiled; info has the compile
    time, the FLOPs and bytes accessed per device of XLA's cost analysis, the TPU compiler's
    `optimal_seconds` where it gives one, and the memory analysis in GiB."""
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    info = {"compile_seconds": round(seconds, 2), "flops_per_device": float(cost.get("flops", 0.0)),
            "bytes_accessed_per_device": float(cost.get("bytes accessed", 0.0))}
    if cost.get("optimal_seconds", 0.0) > 0:  # the TPU compiler's own run-time estimate (not on CPU)
        info["optimal_seconds"] = float(cost["optimal_seconds"])
    if memory is not None:
        for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                      "generated_code_size_in_bytes"):
            info[field.replace("_size_in_bytes", "_gib")] = round(getattr(memory, field, 0) / 2**30, 4)
    return compiled, info


def make_preview_fn(graphdef, config, batch, null_text=None):
    """jit(state, text, mask, lowres, rng) -> EMA-model samples shaped like the first rows of the target
    (`null_text`: the encoded empty prompt as guidance's unconditional branch, IF conventions)."""
    from lumiere_jax.models.conditioning import upsample
    from lumiere_jax.sample.generate import generate

    target = batch["video_hires"] if config.ssr.enabled else batch["video"]
    n = min(config.train.num_samples, target.shape[0])
    shape = (n,) + tuple(target.shape[1:])

    def preview(state, text, mask, lowres, rng):
        model = nnx.merge(graphdef, state).ema_model()
        cond = {"text": text[:n], "mask": unet_mask(mask[:n], config.text)}
        negative = None if null_text is None else null_conditioning(cond, null_text)
        if config.ssr.enabled:
            cond["lowres"] = upsample(lowres[:n], shape[2], config.model.lowres_align_corners)
            cond["aug"] = jnp.full((n,), config.ssr.sample_aug_logsnr, jnp.float32)
        noise_rng, rng = jax.random.split(rng)
        noise = jax.random.normal(noise_rng, shape, jnp.float32)
        return generate(model, cond, noise, rng, config, num_steps=config.train.sample_steps, negative=negative)

    return jax.jit(preview)


def write_previews(directory: pathlib.Path, videos: np.ndarray, fps: float) -> None:
    """One GIF per sample plus a PNG contact sheet (frames in rows, one row per sample), enlarged."""
    from lumiere_jax.sample.video_io import clips_sheet, enlarge, to_uint8, write_gif, write_png

    directory.mkdir(parents=True, exist_ok=True)
    frames = [to_uint8(v) for v in videos]
    for i, clip in enumerate(frames):
        write_gif(directory / f"sample_{i}.gif", enlarge(clip), fps)
    write_png(directory / "samples.png", clips_sheet(frames))


def train(config, workdir, batches: Optional[Iterator] = None) -> dict:
    """Trains until `config.train.num_steps` (resuming from `workdir` if it holds checkpoints).

    `batches` defaults to the Grain pipeline of `config.data`; any iterator of global batch dicts
    with get_state()/set_state() can be given instead. Returns a summary of the run.
    """
    wall_start = time.perf_counter()
    workdir = pathlib.Path(workdir)
    train_cfg = config.train
    mesh = mesh_from_config(config.mesh)
    rules = logical_axis_rules(config.mesh.rules)
    checkpointer = Checkpointer(workdir / "checkpoints", train_cfg, json.loads(config.to_json()))
    start = checkpointer.latest_step()
    summary_file = workdir / "train_summary.json"
    if start is not None and start >= train_cfg.num_steps and summary_file.exists():
        # A finished run started again (the build scripts resume every stage): nothing is built or
        # restored, and the summary of the invocation that trained stays (provenance files cite it).
        checkpointer.close()
        logging.info("run already at step %d of %d: nothing to train", start, train_cfg.num_steps)
        return json.loads(summary_file.read_text())
    owns_batches = batches is None
    if owns_batches:  # first: a bad data path or shard fails before minutes of model building
        from lumiere_jax.data.pipeline import make_pipeline

        batches = make_pipeline(config, mesh)
    if start is not None:
        graphdef, state, shardings = restore_train_state(config, mesh, rules, checkpointer, start, batches)
        logging.info("resumed from step %d", start)
    else:
        start = 0
        ts = build_train_state(config, mesh, rules)
        if train_cfg.init_from:
            logging.info("initialised %s weights from %s", initialize_from(ts, train_cfg.init_from), train_cfg.init_from)
        graphdef, state = nnx.split(ts)
        shardings = state_shardings(state, mesh, rules)
        del ts

    encoder = None
    if config.text.encode_in_step:
        from lumiere_jax.text.encoder import load_text_encoder, load_tokenizer

        module = load_text_encoder(config.text, mesh, rules)
        if owns_batches:  # the pipeline tokenizes with config.text.vocabulary: ids the encoder must embed
            load_tokenizer(config.text, module.config.vocab_size)
        encoder_graphdef, weights = nnx.split(module)
        encoder = FrozenEncoder(encoder_graphdef, weights, state_shardings(weights, mesh, rules))
        del module
    encoder_args = () if encoder is None else (encoder.weights,)  # the compiled step's third argument
    null_text = None  # IF's null prompt, T5(""), for text dropout and the previews' guidance
    if encodes_null_prompt(config.text):
        null_text = encode_null_prompt(config.text, mesh, rules,
                                       None if encoder is None else nnx.merge(encoder.graphdef, encoder.weights))

    def step_fn(image_mode: bool):
        return make_train_step(graphdef, config, learning_rate_schedule(train_cfg), image_mode, null_text)

    writer = MetricWriter(workdir / "tensorboard")
    preemption = Preemption()
    peak = peak_tflops(jax.devices()[0].device_kind, train_cfg.peak_tflops)
    compiled, preview, info, history, last, logged = {}, None, {}, [], {}, []
    step = start
    bar = tqdm(total=train_cfg.num_steps, initial=start, desc="train", disable=jax.process_index() != 0,
               dynamic_ncols=True)
    interval_start = time.perf_counter()
    try:
        while step < train_cfg.num_steps:
            if preemption.requested:
                logging.warning("SIGTERM: checkpointing step %d and exiting", step)
                break
            batch = next(batches)
            inputs = step_inputs(batch, config)
            image_batch = bool(batch.get("image_batch", False))
            if image_batch not in compiled:
                compiled[image_batch], info = compile_step(step_fn(image_batch), state, shardings, inputs,
                                                           mesh, rules, encoder)
                interval_start = time.perf_counter()
            state, metrics = compiled[image_batch](state, inputs, *encoder_args)
            step += 1
            history.append(metrics)
            if step % train_cfg.log_every == 0 or step == train_cfg.num_steps:
                history = jax.device_get(history)
                last = _log(step, history, batch, batches, info, peak, interval_start, writer, bar)
                logged.append(last)
                history, interval_start = [], time.perf_counter()
                if last["train/nonfinite_streak"] > train_cfg.max_nonfinite_steps:
                    raise NonFiniteError(
                        f"{int(last['train/nonfinite_streak'])} non-finite updates in a row up to step {step} "
                        f"(> train.max_nonfinite_steps={train_cfg.max_nonfinite_steps}); the last good "
                        f"checkpoint is kept in {workdir / 'checkpoints'}. Lower train.learning_rate or check the data.")
            if train_cfg.sample_every and step % train_cfg.sample_every == 0:
                preview = preview or make_preview_fn(graphdef, config, batch, null_text)
                encoder_state = None if encoder is None else (encoder.graphdef, encoder.weights)
                text, mask = _text_of(batch, config, encoder_state)
                videos = jax.device_get(preview(state, text, mask, batch["video"], jax.random.key(step)))
                if jax.process_index() == 0:
                    write_previews(workdir / "samples" / f"step_{step:08d}", videos, PREVIEW_FPS)
            if step % train_cfg.checkpoint_every == 0:
                checkpointer.save(step, state, batches)
            bar.update(1)
        if checkpointer.latest_step() != step:
            checkpointer.save(step, state, batches)
    finally:
        checkpointer.close()
        if owns_batches:
            batches.close()  # its worker processes, now: left to exit they warn of leaked shared memory
        writer.close()
        bar.close()
        preemption.restore()
    summary = {"step": step, "start_step": start, "preempted": preemption.requested, "compile": info,
               "losses": [m["train/loss"] for m in logged], "last_metrics": last,
               "wall_seconds": round(time.perf_counter() - wall_start, 1)}  # this invocation, set-up included
    if jax.process_index() == 0:
        summary_file.write_text(json.dumps(summary, indent=2))
    return summary


def _log(step, history, batch, batches, info, peak, interval_start, writer, bar) -> dict:
    seconds = (time.perf_counter() - interval_start) / len(history)
    values = summarize(history)
    values["train/nonfinite_streak"] = float(history[-1]["nonfinite_streak"])
    values["train/step_seconds"] = seconds
    values["train/clips_per_second"] = batch["video"].shape[0] / seconds
    values["data/skipped_records"] = float(getattr(batches, "num_skipped", 0))
    if info.get("flops_per_device"):
        tflops = info["flops_per_device"] / seconds / 1e12
        values["perf/tflops_per_device"] = tflops
        if peak:
            values["perf/mfu"] = tflops / peak
    writer.scalars(step, values)
    bar.set_postfix(loss=f"{values['train/loss']:.4f}", s_per_step=f"{seconds:.2f}")
    return values


def export(config, workdir) -> pathlib.Path:
    """`--mode=export`: writes the latest checkpoint's EMA parameters for sampling to workdir/export
    (with train.trainable=spatial, the spatial ones only)."""
    workdir = pathlib.Path(workdir)
    mesh = mesh_from_config(config.mesh)
    rules = logical_axis_rules(config.mesh.rules)
    checkpointer = Checkpointer(workdir / "checkpoints", config.train, json.loads(config.to_json()))
    step = checkpointer.latest_step()
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir / 'checkpoints'} to export; train first")
    ts = nnx.merge(*restore_train_state(config, mesh, rules, checkpointer, step)[:2])
    checkpointer.close()
    out = workdir / "export"
    # A spatial fine-tune (a style, or T2I pre-training) exports its spatial weights only: what
    # sample.style_checkpoint interpolates and what train.init_from inflates.
    which = param_groups.SPATIAL if config.train.trainable == "spatial" else nnx.Param
    save_weights(out, nnx.state(ts.ema_model(), which), json.loads(config.to_json()))
    logging.info("exported EMA weights of step %d to %s", step, out)
    return out
