"""A caption-trained vocabulary and a seeded frozen encoder: the demo's text path without a released T5."""
import json

import jax
import numpy as np
import pytest
from flax import nnx

from data_pipelines import train_vocabulary
from lumiere_jax.config import base_config
from lumiere_jax.text.encoder import load_text_encoder
from lumiere_jax.text.tokenizer import T5Tokenizer

CAPTIONS = [f"a {c} {s} moving {d}" for c in ("red", "green", "blue") for s in ("circle", "square")
            for d in ("left", "right", "up", "down")]


def test_vocabulary_job_gives_whole_word_t5_ids(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"id": str(i), "caption": c}) for i, c in enumerate(CAPTIONS)))
    out = tmp_path / "vocab.model"
    assert train_vocabulary.main(["--input", str(tmp_path / "*.jsonl"), "--output", str(out)]) == 0
    tokenizer = T5Tokenizer(str(out), max_length=8, extra_ids=0)
    batch = tokenizer(["a red circle moving left", "a blue square moving up"])
    assert batch.mask.sum(axis=1).tolist() == [6, 6]  # five words and EOS
    assert batch.tokens[0, 5] == 1 and batch.tokens[0, 6] == 0  # EOS then padding
    words = batch.tokens[0, :5].tolist()
    assert len(set(words)) == 5 and 2 not in words  # one known piece per word, no unk
    assert batch.tokens[1, 0] == words[0] and batch.tokens[1, 3] == words[3]  # 'a' and 'moving' again
    assert train_vocabulary.main(["--input", str(tmp_path / "none*.jsonl"), "--output", str(out)]) == 2


def test_seeded_encoder_is_reproducible_and_seed_dependent():
    text = base_config().text
    text.encoder, text.checkpoint_format, text.init_seed = "tiny", "seed", 3
    first, second = load_text_encoder(text), load_text_encoder(text)
    text.init_seed = 4
    other = load_text_encoder(text)
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.Param))  # noqa: E731
    for a, b, c in zip(leaves(first), leaves(second), leaves(other)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, c) for a, c in zip(leaves(first), leaves(other)))
    text.checkpoint_format = "safetensors"
    with pytest.raises(ValueError, match="checkpoint_format='safetensors'"):
        load_text_encoder(text)
