"""The T5 tokenizer: EOS, padding, truncation, masks, extra ids, and equality with seqio."""
import io

import numpy as np
import pytest
import sentencepiece

from lumiere_jax.config import base_config
from lumiere_jax.text.encoder import load_tokenizer
from lumiere_jax.text.tokenizer import EOS_ID, T5Tokenizer

CORPUS = [
    "a red fox jumps over the lazy dog in the snow",
    "timelapse of clouds moving over a mountain lake at sunset",
    "a golden retriever runs on the beach, waves crashing",
    "close-up of a cup of coffee with steam rising slowly",
    "an astronaut riding a horse on the moon, cinematic lighting",
    "aerial drone shot of a city at night with glowing streets",
    "a ballerina spins on a stage under a spotlight",
    "rain drops falling on a window, blurry lights behind",
] * 8
CAPTIONS = [
    "a red fox runs on the beach",
    "",
    "Ünïcödé and unseen words: zebra quokka 42!",
    "fill <extra_id_0> the blanks <extra_id_1> please",
    "an astronaut riding a horse " * 10,
]


def train_tiny_sentencepiece(path) -> str:
    """A T5-style unigram model (pad 0, EOS 1, UNK 2, no BOS) trained on CORPUS; returns the path."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=80, model_type="unigram", minloglevel=2,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0,
    )
    with open(path, "wb") as f:
        f.write(model.getvalue())
    return str(path)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("spm") / "tiny.model")


def test_eos_padding_truncation_and_mask(spm_path):
    raw = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    captions = [c for c in CAPTIONS if "<extra_id" not in c]  # sentinels are not in the raw model
    tokenizer = T5Tokenizer(spm_path, max_length=12, extra_ids=100)
    batch = tokenizer(captions)
    assert batch.tokens.shape == batch.mask.shape == (len(captions), 12)
    assert batch.tokens.dtype == np.int32
    for row, caption in enumerate(captions):
        pieces = raw.encode(caption)
        n = min(len(pieces), 11)
        expected = pieces[:n] + [EOS_ID] + [0] * (11 - n)
        np.testing.assert_array_equal(batch.tokens[row], expected)
        np.testing.assert_array_equal(batch.mask[row], np.arange(12) <= n)
        assert batch.truncated[row] == (len(pieces) > 11)
    assert batch.truncated[-1] and not batch.truncated[1]  # the long caption is cut, the empty one is not
    assert T5Tokenizer(spm_path, max_length=1)(["anything at all"]).tokens.tolist() == [[EOS_ID]]


def test_extra_ids_count_down_from_the_top(spm_path):
    tokenizer = T5Tokenizer(spm_path, max_length=8, extra_ids=100)
    assert tokenizer.vocab_size == 80 + 100
    tokens = tokenizer(["<extra_id_0>", "<extra_id_99>"]).tokens
    assert tokens[0, :2].tolist() == [179, EOS_ID]
    assert tokens[1, :2].tolist() == [80, EOS_ID]


def test_seqio_vocabulary_gives_the_same_ids(spm_path):
    seqio = pytest.importorskip("seqio")
    vocabulary = seqio.SentencePieceVocabulary(spm_path, extra_ids=100)
    ours, theirs = T5Tokenizer(spm_path, max_length=64)(CAPTIONS), T5Tokenizer(vocabulary, max_length=64)(CAPTIONS)
    np.testing.assert_array_equal(ours.tokens, theirs.tokens)
    np.testing.assert_array_equal(ours.mask, theirs.mask)
    for caption, row in zip(CAPTIONS, ours.tokens):  # and the ids are seqio's own encoding + EOS
        ids = list(vocabulary.encode(caption))[:63] + [EOS_ID]
        assert row[: len(ids)].tolist() == ids


def test_bad_vocabulary_and_captions(spm_path, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.model' does not exist; set config\.text\.vocabulary"):
        T5Tokenizer(tmp_path / "missing.model", max_length=8)
    (tmp_path / "junk.model").write_bytes(b"\xff\x00 not a model")
    with pytest.raises(ValueError, match="is not a sentencepiece model file"):
        T5Tokenizer(tmp_path / "junk.model", max_length=8)
    with pytest.raises(TypeError, match=r"entries \[1\] are not"):
        T5Tokenizer(spm_path, max_length=8)(["fine", None])
    text = base_config().text
    text.vocabulary, text.max_length = spm_path, 8
    with pytest.raises(ValueError, match="has 180 ids but the encoder embeds only 128"):
        load_tokenizer(text, encoder_vocab_size=128)


def test_non_t5_special_ids_are_refused(tmp_path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=64, minloglevel=2,
        pad_id=3, eos_id=2, unk_id=0, bos_id=1,
    )
    (tmp_path / "other.model").write_bytes(model.getvalue())
    with pytest.raises(ValueError, match="pad id 3 and EOS id 2; T5 needs pad 0 and EOS 1"):
        T5Tokenizer(tmp_path / "other.model", max_length=8)
