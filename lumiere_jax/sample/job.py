"""`--mode=sample`: prompts -> base STUNet -> (optional) SSR -> MP4, GIF, NPZ and PNG per prompt.

`sample.task` adds the conditional tasks (lumiere_jax/sample/tasks.py): their input files are read
and fitted before any model is built, and the known pixels are pasted into every output, at the
SSR's size too.

Everything that can be wrong with the request (no prompts, a missing checkpoint, an SSR whose
input size is not the base model's output, text embeddings of the wrong width) is checked before
any model is built. Prompts are batched and sharded over the mesh's batch axes; each prompt's
starting noise comes from fold_in(seed, index), so with a deterministic sampler (DDIM, eta 0) a
prompt gives the same video whatever batch it lands in.
"""
from __future__ import annotations

import json
import pathlib
import re
import time
from typing import Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from lumiere_jax import diffusion
from lumiere_jax.models.conditioning import upsample
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, UNetConfig
from lumiere_jax.diffusion.samplers import sdedit_steps
from lumiere_jax.models.weights import check_style_alpha, interpolate_spatial, restore_model
from lumiere_jax.parallel import batch_shard_count, batch_sharding, logical_axis_rules, mesh_from_config
from lumiere_jax.provenance.fingerprint import model_sha256
from lumiere_jax.provenance.stamp import Stamp
from lumiere_jax.sample.generate import check_long_clip, generate, paste_known
from lumiere_jax.sample.masks import KNOWN_CHANNELS, known_input
from lumiere_jax.sample.tasks import build_known, check_task, load_inputs, load_requests
from lumiere_jax.sample.video_io import contact_sheet, enlarge, to_uint8, write_gif, write_mp4, write_png
from lumiere_jax.text.conventions import conventions, encodes_null_prompt, prepare_prompts, unet_mask


TASK_METHODS = ("model", "replacement")
UNKNOWN_TASKS = ("t2v", "edit")  # tasks with no known pixels


def load_prompts(sample) -> list[str]:
    if sample.prompts_file:
        path = pathlib.Path(sample.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"sample.prompts_file {path} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"sample.prompts_file {path} has no prompts (one per line)")
        return prompts
    prompts = [p for p in sample.prompts if p.strip()]
    if not prompts:
        raise ValueError("no prompts: set sample.prompts or sample.prompts_file")
    return prompts


class Stage:
    """An exported model (weights + the config that built it), checked but not yet loaded."""

    def __init__(self, name: str, path: str):
        self.name, self.path = name, pathlib.Path(path)
        if not (self.path / "config.json").is_file() or not (self.path / "params").is_dir():
            raise FileNotFoundError(f"sample.{name}_checkpoint {self.path} is not an export "
                                    f"(needs config.json and params/; write one with --mode=export)")
        self.config = ml_collections.ConfigDict(json.loads((self.path / "config.json").read_text()))
        self.model_config = UNetConfig.from_config(self.config.model)

    def sampling_config(self, config) -> ml_collections.ConfigDict:
        """The run's config with this model's own `diffusion` (schedule and parameterization are fixed
        by its training: an SSR trained on a shifted schedule samples on it behind any base); the
        sampler settings (steps, guidance, thresholding) stay the run's."""
        stage = ml_collections.ConfigDict(config.to_dict())
        stage.diffusion = ml_collections.ConfigDict(self.config.diffusion.to_dict())
        return stage

    def build(self, mesh, rules) -> UNet:
        return restore_model(self.path, lambda key: UNet(self.model_config, rngs=Rngs(key)), mesh, rules)


def check_stages(base: Stage, ssr: Optional[Stage], text) -> None:
    """The stages fit each other and were trained with the text conventions `text` (config.text) encodes with."""
    if base.config.ssr.enabled:
        raise ValueError(f"sample.base_checkpoint {base.path} is an SSR model, not a base STUNet")
    for stage in (base, ssr) if ssr is not None else (base,):
        trained = stage.config.text.get("conventions", "lumiere")
        if trained != conventions(text):
            raise ValueError(f"sample.{stage.name}_checkpoint {stage.path} was trained with text.conventions={trained!r} "
                             f"but this run encodes prompts with {conventions(text)!r}: set config.text.conventions="
                             f"{trained!r}")
    if ssr is None:
        return
    if not ssr.config.ssr.enabled:
        raise ValueError(f"sample.ssr_checkpoint {ssr.path} is not an SSR model (its ssr.enabled is False)")
    low, out = ssr.config.data.resolution, base.config.data.resolution
    if low != out:
        raise ValueError(f"the SSR model {ssr.path} takes {low}x{low} clips but the base model makes {out}x{out}")
    if ssr.model_config.text_dim != base.model_config.text_dim:
        raise ValueError(f"base and SSR models expect text widths {base.model_config.text_dim} and "
                         f"{ssr.model_config.text_dim}")


def text_embeddings(config, prompts: list[str], text_dim: int, mesh, rules) -> tuple[np.ndarray, np.ndarray]:
    """(N, L, D) embeddings and (N, L) masks for the prompts: precomputed, or from config.text's T5."""
    path = config.sample.prompt_embeddings
    if path:
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"sample.prompt_embeddings {path} does not exist")
        with np.load(path) as data:
            emb, mask = np.asarray(data["embeddings"], np.float32), np.asarray(data["mask"], bool)
        if emb.shape[0] != len(prompts) or mask.shape != emb.shape[:2]:
            raise ValueError(f"sample.prompt_embeddings {path} holds {emb.shape[0]} rows {emb.shape} / mask "
                             f"{mask.shape} for {len(prompts)} prompts")
    else:
        from lumiere_jax.text.encoder import load_text_encoder, load_tokenizer, make_encode_fn

        encoder = load_text_encoder(config.text, mesh, rules)
        tokens = load_tokenizer(config.text, encoder.config.vocab_size)(prepare_prompts(prompts, config.text))
        emb = np.asarray(make_encode_fn(encoder, mesh, rules)(tokens.tokens, tokens.mask), np.float32)
        mask = np.asarray(tokens.mask, bool)
    mask = unet_mask(mask, config.text)
    if emb.shape[-1] != text_dim:
        raise ValueError(f"text embeddings are {emb.shape[-1]} wide but the models expect {text_dim}")
    return emb, mask


def prompt_conditioning(config, requests, text_dim: int, mesh, rules) -> tuple[np.ndarray, np.ndarray, Optional[dict]]:
    """The prompts' embeddings and masks, and the negative prompts' as {"text", "mask"} (zero rows
    where a request has none, the null text), or None when no request has one.

    Under IF's text conventions the null text is the encoded empty prompt, so every request
    without a negative prompt gets T5("") as its unconditional branch.
    """
    null = "" if encodes_null_prompt(config.text) else None
    negative_of = lambda r: r.negative_prompt or null  # noqa: E731
    negatives = sorted({negative_of(r) for r in requests} - {None})
    if negatives and config.sample.prompt_embeddings:
        what = ("the null prompt '' (config.text.conventions='deepfloyd_if') is" if negatives == [""]
                else "negative prompts are")
        raise ValueError(f"{what} encoded with config.text's T5, but sample.prompt_embeddings is set: leave it "
                         "empty, or drop sample.negative_prompt / the requests' negative_prompt")
    prompts = [r.prompt for r in requests]
    emb, mask = text_embeddings(config, prompts + negatives, text_dim, mesh, rules)
    if not negatives:
        return emb, mask, None
    rows = {text: len(prompts) + i for i, text in enumerate(negatives)}
    keep = np.array([negative_of(r) in rows for r in requests])
    index = np.array([rows.get(negative_of(r), 0) for r in requests])
    negative = {"text": np.where(keep[:, None, None], emb[index], 0.0).astype(emb.dtype),
                "mask": np.where(keep[:, None], mask[index], False)}
    return emb[:len(prompts)], mask[:len(prompts)], negative


def slug(text: str, index: int) -> str:
    return f"{index:03d}_" + (re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:48] or "prompt")


class StageRunner:
    """One jitted sampler per stage, fed batches of prompts placed on the mesh's batch axes."""

    def __init__(self, model, config, frames: int, size: int, window: int, overlap: int, mesh, rules, aug=None,
                 image_mode: bool = False, replacement: bool = False, aggregation: str = "average"):
        graphdef, self.state = nnx.split(model)
        self.mesh, self.rules = mesh, rules
        self.frames, self.size, self.aug, self.config = frames, size, aug, config
        shards = batch_shard_count(mesh, rules)

        def constrain(x):
            if x.shape[0] % shards:
                return x
            return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, rules, x.ndim))

        def run(state, text, mask, negative, lowres, known, init, keys):
            model = nnx.merge(graphdef, state)
            noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (frames, size, size, 3)))(keys)
            cond = {"text": text, "mask": mask}
            if lowres is not None:
                aug = jnp.full((text.shape[0],), self.aug, jnp.float32)
                aug_rng = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
                noisy = jax.vmap(lambda r, x, a: diffusion.noise_augment(r, x[None], a)[0][0])(aug_rng, lowres, aug)
                cond.update(lowres=noisy, aug=aug)
            return generate(model, cond, noise, jax.random.fold_in(keys[0], 2), config, window=window,
                            overlap=overlap, aggregation=aggregation, constrain=constrain, image_mode=image_mode, known=known,
                            replacement=replacement, init=init, strength=config.sample.strength,
                            negative=negative)

        self.run = jax.jit(run)

    def __call__(self, text, mask, negative, lowres, known, init, keys):
        """negative: None, or {"text", "mask"} of the negative prompts (zero rows: none)."""
        put = lambda a: None if a is None else jax.device_put(a, batch_sharding(self.mesh, self.rules, a.ndim))  # noqa: E731
        with jax.set_mesh(self.mesh):
            negative = None if negative is None else {k: put(v) for k, v in negative.items()}
            out = self.run(self.state, put(text), put(mask), negative, put(lowres), put(known), put(init), put(keys))
            return np.asarray(jax.device_get(out))


def sample(config, workdir) -> dict:
    """Runs the whole job; returns the samples.json content."""
    workdir = pathlib.Path(workdir)
    s = config.sample
    check_task(s.task)
    requests = load_requests(s, None if s.tasks_file else load_prompts(s))
    prompts = [r.prompt for r in requests]
    if not s.base_checkpoint:
        raise ValueError("sample.base_checkpoint is required (an export directory of the base STUNet)")
    base = Stage("base", s.base_checkpoint)
    ssr = Stage("ssr", s.ssr_checkpoint) if s.ssr_checkpoint else None
    check_stages(base, ssr, config.text)
    replacement = check_task_method(s, base)
    train_frames = base.config.data.num_frames
    frames = s.num_frames or train_frames
    if frames < train_frames:
        raise ValueError(f"sample.num_frames={frames} is shorter than the base model's {train_frames} frames")
    if s.batch_size < 1:
        raise ValueError(f"sample.batch_size={s.batch_size} must be >= 1")
    if not s.image_mode:
        check_long_clip(base.model_config, frames, train_frames, s.window_overlap, s.window_aggregation)
        if frames > train_frames and s.window_aggregation == "extend" and s.task != "t2v":
            raise ValueError(f"sample.window_aggregation='extend' makes text-to-video clips; sample.task={s.task!r} "
                             "samples clips longer than the model's window with 'average'")
    if ssr is not None:
        check_long_clip(ssr.model_config, frames, ssr.config.ssr.window, ssr.config.ssr.overlap,
                        names=("sample.num_frames", "the SSR's ssr.overlap"))
    size = base.config.data.resolution
    loaded = [load_inputs(s.task, r, frames, s.fps) for r in requests]
    known, clips, task_info = known_inputs(s.task, loaded, size, frames, size)
    init = clips if s.task == "edit" else None  # the clip SDEdit starts from (nothing is known)
    if s.task in UNKNOWN_TASKS and base.model_config.conditioning_channels == 0:
        known = None  # a text-to-video checkpoint has no <C, M> input; a conditional one reads "nothing known"
    check_style(s)
    stamp = Stamp(config.provenance)
    mesh = mesh_from_config(config.mesh)
    rules = logical_axis_rules(config.mesh.rules)
    timings = {}

    start = time.perf_counter()
    emb, mask, negative = prompt_conditioning(config, requests, base.model_config.text_dim, mesh, rules)
    timings["text_seconds"] = time.perf_counter() - start
    shards = batch_shard_count(mesh, rules)
    batch = -(-min(s.batch_size, len(prompts)) // shards) * shards
    order = list(range(len(prompts)))
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(s.seed), i))(jnp.arange(len(prompts)))

    def padded(rows, array):
        rows = rows + [rows[-1]] * (batch - len(rows))
        if isinstance(array, dict):
            return {k: padded(rows, v) for k, v in array.items()}
        return None if array is None else array[np.asarray(rows)]

    start = time.perf_counter()
    model = base.build(mesh, rules)
    stamp.checkpoints["base"] = model_sha256(model)  # before a style changes its spatial weights
    style = interpolate_spatial(model, s.style_checkpoint, s.style_alpha) if s.style_checkpoint else None
    base_runner = StageRunner(model, base.sampling_config(config), frames, size, train_frames, s.window_overlap,
                              mesh, rules, image_mode=s.image_mode, replacement=replacement,
                              aggregation=s.window_aggregation)
    videos = np.zeros((len(prompts), frames, size, size, 3), np.float32)
    for rows in tqdm(batches, desc="base", disable=jax.process_index() != 0):
        out = base_runner(padded(rows, emb), padded(rows, mask), padded(rows, negative), None, padded(rows, known),
                          padded(rows, init), padded(rows, keys))
        videos[rows] = out[: len(rows)]
    timings["base_seconds"] = time.perf_counter() - start

    output_known = known  # the known pixels at the output's size: the watermark leaves them as they are
    if ssr is not None:
        start = time.perf_counter()
        high_size = ssr.config.data.hires_resolution
        ssr_model = ssr.build(mesh, rules)
        stamp.checkpoints["ssr"] = model_sha256(ssr_model)
        runner = StageRunner(ssr_model, ssr.sampling_config(config), frames, high_size,
                             ssr.config.ssr.window, ssr.config.ssr.overlap, mesh, rules,
                             aug=ssr.config.ssr.sample_aug_logsnr)
        lowres_all = np.asarray(upsample(jnp.asarray(videos), high_size,
                                              ssr.config.model.get("lowres_align_corners", False)))
        high = np.zeros((len(prompts), frames, high_size, high_size, 3), np.float32)
        ssr_keys = jax.vmap(lambda k: jax.random.fold_in(k, 7))(keys)
        for rows in tqdm(batches, desc="ssr", disable=jax.process_index() != 0):
            out = runner(padded(rows, emb), padded(rows, mask), padded(rows, negative), padded(rows, lowres_all),
                         None, None, padded(rows, ssr_keys))
            high[rows] = out[: len(rows)]
        videos = high
        if s.task not in UNKNOWN_TASKS:  # the input's known pixels, fitted to the output size, pasted in after SSR too
            output_known = known_inputs(s.task, loaded, high_size, frames, size)[0]
            videos = np.asarray(paste_known(videos, output_known))
        timings["ssr_seconds"] = time.perf_counter() - start

    settings = {"sampler": s.sampler, "num_steps": s.num_steps, "guidance_scale": s.guidance_scale,
                "threshold_percentile": s.threshold_percentile, "threshold_max": s.threshold_max,
                "resample": s.resample, "seed": s.seed, "num_frames": frames,
                "base_checkpoint": str(base.path), "ssr_checkpoint": str(ssr.path) if ssr else None,
                "fps": s.fps, "image_mode": s.image_mode, "task": s.task,
                "task_method": s.task_method if s.task not in UNKNOWN_TASKS else None,
                "paste_known": s.task not in UNKNOWN_TASKS,
                "strength": s.strength if s.task == "edit" else None, "style": style,
                "provenance": stamp.describe()}
    generations = [stamp.generation(settings, r.prompt, r.negative_prompt, i) for i, r in enumerate(requests)]
    keep = [None] * len(prompts) if s.task in UNKNOWN_TASKS else output_known[..., 3] > 0.5
    records = []
    if jax.process_index() == 0:
        records = write_outputs(workdir, prompts, videos, s.fps, stamp, generations, keep)
    for record, info, request in zip(records, task_info, requests):
        record["task_inputs"] = info
        record["negative_prompt"] = request.negative_prompt or None
    report = {"samples": records, "settings": settings, "timings": {k: round(v, 2) for k, v in timings.items()}}
    if frames > train_frames and not s.image_mode:  # what the evaluator's seam measure reads
        report["windows"] = {"window": train_frames, "overlap": s.window_overlap, "aggregation": s.window_aggregation}
    if jax.process_index() == 0:
        (workdir / "samples.json").write_text(json.dumps(report, indent=2))
    return report


def check_task_method(sample, base: Stage) -> bool:
    """True when the base model samples a conditional task by replacement; errors name a checkpoint that
    cannot serve the task."""
    channels = base.model_config.conditioning_channels
    if sample.task_method not in TASK_METHODS:
        raise ValueError(f"sample.task_method={sample.task_method!r} is not one of {', '.join(TASK_METHODS)}")
    if sample.task in UNKNOWN_TASKS:  # any checkpoint: nothing is known (edit starts from its input instead)
        if sample.task == "edit":
            sdedit_steps(sample.strength, sample.num_steps)
        return False
    if sample.task_method == "replacement":
        if channels:
            raise ValueError(f"sample.task_method='replacement' is the training-free baseline for a text-to-video "
                             f"checkpoint; {base.path} is a conditional one (model.conditioning_channels={channels})")
        return True
    if channels != KNOWN_CHANNELS:
        raise ValueError(
            f"sample.task={sample.task!r} needs a conditional checkpoint (model.conditioning_channels={KNOWN_CHANNELS}); "
            f"sample.base_checkpoint {base.path} has {channels}. Fine-tune one from it (configs/demo_conditional.py "
            "shows how) or set sample.task_method=replacement for the training-free baseline")
    return False


def check_style(sample) -> None:
    """sample.style_checkpoint / style_alpha, before any model is built (the backbone is checked on load)."""
    if sample.style_checkpoint and not (pathlib.Path(sample.style_checkpoint) / "params").is_dir():
        raise FileNotFoundError(f"sample.style_checkpoint {sample.style_checkpoint} is not an export (needs params/; "
                                "write one with --mode=export of a train.trainable=spatial run)")
    check_style_alpha(sample.style_alpha)


def known_inputs(task: str, loaded: list, size: int, frames: int, base_size: int) -> tuple[np.ndarray, np.ndarray, list]:
    """Every request's ⟨C, M⟩ (N, T, size, size, 4), its input clip (N, T, size, size, 3) and what was read
    for it (files, hashes, fitting)."""
    known, clips, info = [], [], []
    for item in loaded:
        clip, mask, fit = build_known(task, item, size, frames, size / base_size)
        known.append(np.asarray(known_input(clip, mask)))
        clips.append(clip)
        info.append({"files": item.files, **item.source, **fit} if task != "t2v" else {})
    return np.stack(known), np.stack(clips), info


def write_outputs(workdir: pathlib.Path, prompts: list[str], videos: np.ndarray, fps: float, stamp: Stamp,
                  generations: list[dict], keep) -> list[dict]:
    """Every clip as MP4 (signed when a signer is configured), GIF, NPZ and PNG, all from its watermarked frames
    (`keep`: per clip, the known pixels the mark leaves as they are, or None)."""
    workdir.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (prompt, video, generation, known) in enumerate(zip(prompts, videos, generations, keep)):
        name = slug(prompt, i)
        frames, watermark = stamp.mark(to_uint8(video), known)
        paths = {ext: workdir / f"{name}.{ext}" for ext in ("mp4", "gif", "npz", "png")}
        write_mp4(paths["mp4"], frames, fps)
        c2pa = stamp.sign(paths["mp4"], dict(generation, watermark=watermark))
        write_gif(paths["gif"], enlarge(frames), fps)
        np.savez_compressed(paths["npz"], frames=frames)
        write_png(paths["png"], contact_sheet(enlarge(frames)))
        records.append({"prompt": prompt, "index": i, "seed_index": i, **{k: str(v) for k, v in paths.items()},
                        "watermark": watermark, "c2pa": c2pa})
    return records
