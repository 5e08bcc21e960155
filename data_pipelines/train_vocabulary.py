"""Trains a T5-style sentencepiece vocabulary on captions (for domains without a released T5).

    python -m data_pipelines.train_vocabulary --input 'data/shapes/*.jsonl' --output vocab.model [--vocab_size 64]

Input: the `<stem>.jsonl` caption lists that shard writers leave (`{"id", "caption"}` per line).
Ids follow T5: pad 0, EOS 1, unk 2, no BOS, so `lumiere_jax.text.tokenizer.T5Tokenizer` accepts it.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import pathlib
import sys
from typing import Optional

import sentencepiece


def read_captions(patterns: list[str]) -> list[str]:
    paths = sorted({p for pattern in patterns for p in glob.glob(pattern)})
    if not paths:
        raise FileNotFoundError(f"--input {patterns} matches no files")
    captions = []
    for path in paths:
        for line in pathlib.Path(path).read_text().splitlines():
            if line.strip():
                captions.append(json.loads(line)["caption"])
    if not captions:
        raise ValueError(f"no captions in {paths}")
    return captions


def train_vocabulary(captions: list[str], vocab_size: int) -> bytes:
    """A word-level sentencepiece model: a caption grammar has few words, and whole-word pieces keep
    captions short (a unigram model on so small a corpus falls back to characters).
    `vocab_size` is an upper bound."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size, model_type="word",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    return model.getvalue()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", action="append", required=True, help="caption JSONL glob (repeatable)")
    parser.add_argument("--output", required=True, help="the sentencepiece .model file to write")
    parser.add_argument("--vocab_size", type=int, default=64, help="upper bound on pieces (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.vocab_size < 8:
        parser.error(f"--vocab_size={args.vocab_size} must be at least 8")
    try:
        captions = read_captions(args.input)
    except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"train_vocabulary: {e}", file=sys.stderr)
        return 2
    output = pathlib.Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(train_vocabulary(captions, args.vocab_size))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(output))
    print(json.dumps({"output": str(output), "captions": len(captions), "pieces": processor.get_piece_size()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
