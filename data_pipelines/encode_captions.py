"""Precomputes T5 caption embeddings so that training runs without the encoder in the step.

    python -m data_pipelines.encode_captions --input 'captions/*.jsonl' \\
        --checkpoint /ckpt/t5_1_1_xxl --checkpoint_format t5x --vocabulary /ckpt/spm.model

Input: caption shards as JSON Lines, one `{"id": ..., "caption": "..."}` per line (the stand-in
for the data issue's shard format). A line that is not JSON, or lacks a string caption or an
id, is skipped and counted; the job goes on.

Output: per input shard, a `<stem>.t5/` directory (format in lumiere_jax.text.embedding_store:
bfloat16 embeddings, masks, tokens and ids as .npy/.json) next to the input or in
--output_dir, and a summary JSON at the end. Complete shards are skipped on a re-run (use
--overwrite to redo them), so an interrupted job resumes where it stopped.

Captions are encoded in batches sharded over a mesh of this host's devices (--mesh); with
several processes, each takes every process_count-th shard.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np
from tqdm import tqdm

from lumiere_jax.config import base_config
from lumiere_jax.parallel import batch_shard_count, logical_axis_rules, make_mesh
from lumiere_jax.text.checkpoint import count_parameters
from lumiere_jax.text.embedding_store import EmbeddingShardWriter, shard_directory
from lumiere_jax.text.encoder import encoder_config, load_text_encoder, load_tokenizer, make_encode_fn

TEXT_OPTIONS = ("encoder", "variant", "checkpoint", "checkpoint_format", "init_seed", "vocabulary", "max_length",
                "extra_ids", "dtype", "param_dtype")
MAX_LOGGED_BAD_ROWS = 10


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    defaults = base_config().text
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.encode_captions",
        description="Encode caption shards (JSONL of {id, caption}) with the frozen T5 encoder into "
        "bfloat16 embedding shards (<stem>.t5/ directories).",
    )
    parser.add_argument("--input", action="append", required=True,
                        help="caption shard file or glob pattern; repeat for more")
    parser.add_argument("--output_dir", default="", help="where the <stem>.t5/ shards go (default: next to each input)")
    parser.add_argument("--summary", default="",
                        help="summary JSON path (default: <output dir>/encode_captions_summary.json)")
    parser.add_argument("--batch_size", type=int, default=64, help="captions per step, a multiple of the batch shards")
    parser.add_argument("--mesh", default="data=-1,fsdp=1,tensor=1",
                        help="mesh over this host's devices, e.g. data=2,fsdp=2,tensor=2 (one axis may be -1)")
    parser.add_argument("--overwrite", action="store_true", help="re-encode shards that are already complete")
    for key in TEXT_OPTIONS:
        value = defaults[key]
        parser.add_argument(f"--{key}", type=type(value), default=value, help=f"config.text.{key} (default {value!r})")
    return parser.parse_args(argv)


def parse_mesh(text: str) -> dict[str, int]:
    """'data=2,fsdp=-1' -> {'data': 2, 'fsdp': -1}."""
    try:
        return {name.strip(): int(size) for name, size in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise ValueError(f"--mesh {text!r} must look like data=-1,fsdp=1,tensor=1") from None


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Sorted caption files matching `patterns`; a pattern matching nothing is an error."""
    files = set()
    for pattern in patterns:
        matches = [p for p in glob.glob(pattern) if os.path.isfile(p)]
        if not matches:
            raise FileNotFoundError(f"--input {pattern!r} matches no file")
        files.update(matches)
    return sorted(files)


def read_captions(path: str, skipped: collections.Counter) -> tuple[list, list[str]]:
    """(ids, captions) of the valid lines of a JSONL shard; bad lines are counted in `skipped`."""
    ids, captions = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row, reason = None, "not_json"
            else:
                if not isinstance(row, dict) or not isinstance(row.get("caption"), str):
                    reason = "no_caption"
                elif not isinstance(row.get("id"), (str, int)):
                    reason = "no_id"
                else:
                    ids.append(row["id"])
                    captions.append(row["caption"])
                    continue
            skipped[reason] += 1
            if sum(skipped.values()) <= MAX_LOGGED_BAD_ROWS:
                logging.warning("skipping %s:%d (%s)", path, line_no, reason)
    return ids, captions


def encode_shard(ids, captions, writer: EmbeddingShardWriter, tokenizer, encode, batch_size: int, progress) -> int:
    """Encodes one shard batch by batch; returns how many captions were truncated.

    The next batch is dispatched before the previous one is fetched and written, so the device
    works while the host writes. The last batch is padded with empty rows that are dropped.
    """
    truncated, pending = 0, None
    for start in range(0, len(captions), batch_size):
        batch = tokenizer(captions[start : start + batch_size])
        truncated += int(batch.truncated.sum())
        rows = len(batch.tokens)
        tokens = np.pad(batch.tokens, ((0, batch_size - rows), (0, 0)))
        mask = np.pad(batch.mask, ((0, batch_size - rows), (0, 0)))
        result = (start, rows, encode(tokens, mask), batch)
        if pending is not None:
            _write(writer, pending, progress)
        pending = result
    if pending is not None:
        _write(writer, pending, progress)
    writer.close(ids)
    return truncated


def _write(writer, pending, progress) -> None:
    start, rows, embeddings, batch = pending
    writer.write(start, np.asarray(jax.device_get(embeddings))[:rows], batch.mask, batch.tokens)
    progress.update(rows)


def summary_path(args: argparse.Namespace, files: Sequence[str]) -> str:
    """--summary, else `encode_captions_summary[.<process>].json` in the output directory."""
    if args.summary:
        return args.summary
    directory = args.output_dir or (os.path.dirname(os.path.abspath(files[0])) if files else ".")
    name = "encode_captions_summary.json"
    if jax.process_count() > 1:
        name = f"encode_captions_summary.{jax.process_index()}.json"
    return os.path.join(directory, name)


def encode_all(shards: dict, outputs: dict, text, mesh, rules, batch_size: int) -> dict:
    """Loads the encoder once and encodes every shard in `shards` ({path: (ids, captions)})."""
    config = encoder_config(text)
    t0 = time.perf_counter()
    encoder = load_text_encoder(text, mesh, rules)
    tokenizer = load_tokenizer(text, config.vocab_size)
    encode = make_encode_fn(encoder, mesh, rules)
    load_seconds, t0 = time.perf_counter() - t0, time.perf_counter()
    meta = {k: text[k] for k in ("encoder", "variant", "checkpoint", "checkpoint_format", "vocabulary")}
    truncated, total = 0, sum(len(c) for _, c in shards.values())
    with tqdm(total=total, unit="caption", desc="encode_captions") as progress:
        for path, (ids, captions) in shards.items():
            progress.set_postfix_str(os.path.basename(path))
            writer = EmbeddingShardWriter(outputs[path], len(ids), text.max_length, config.d_model,
                                          dict(meta, source=path))
            truncated += encode_shard(ids, captions, writer, tokenizer, encode, batch_size, progress)
    encode_seconds = time.perf_counter() - t0
    return {"captions_truncated": truncated, "load_seconds": round(load_seconds, 3),
            "encode_seconds": round(encode_seconds, 3), "captions_per_second": round(total / encode_seconds, 2)}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Runs the job and returns (and writes) its summary."""
    args = parse_args(argv)
    text = base_config().text
    text.update({key: getattr(args, key) for key in TEXT_OPTIONS})
    rules = logical_axis_rules(None)
    mesh = make_mesh(parse_mesh(args.mesh), devices=jax.local_devices())
    multiple = batch_shard_count(mesh, rules)
    if args.batch_size < 1 or args.batch_size % multiple:
        raise ValueError(
            f"--batch_size {args.batch_size} must be a positive multiple of {multiple} (batch shards of --mesh)"
        )
    files = expand_inputs(args.input)[jax.process_index() :: jax.process_count()]
    outputs = {f: shard_directory(args.output_dir or os.path.dirname(os.path.abspath(f)), f) for f in files}
    skipped: collections.Counter = collections.Counter()
    shards = {f: read_captions(f, skipped) for f in files if args.overwrite or not os.path.isdir(outputs[f])}
    timing = encode_all(shards, outputs, text, mesh, rules, args.batch_size) if shards else {}
    config = encoder_config(text)
    summary = {
        "inputs": files,
        "outputs": [outputs[f] for f in files],
        "shards_encoded": len(shards),
        "shards_already_done": len(files) - len(shards),
        "captions_encoded": sum(len(captions) for _, captions in shards.values()),
        "captions_truncated": timing.get("captions_truncated", 0),
        "rows_skipped": dict(skipped),
        "encoder": dict(text.to_dict(), parameters=count_parameters(config), dim=config.d_model),
        "mesh": dict(mesh.shape),
        "batch_size": args.batch_size,
        "load_seconds": timing.get("load_seconds", 0.0),
        "encode_seconds": timing.get("encode_seconds", 0.0),
        "captions_per_second": timing.get("captions_per_second", 0.0),
    }
    with open(summary_path(args, files), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
