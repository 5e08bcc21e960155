"""The T5 tokenizer on `sentencepiece`: ids, EOS, padding/truncation to a fixed length, masks.

T5's vocabulary is a sentencepiece model (32000 pieces for T5.1.1; id 0 pad, 1 EOS, 2 UNK) plus
`extra_ids` sentinel tokens `<extra_id_0>` ... `<extra_id_99>` numbered from the top
(`<extra_id_0>` is the last id). As in seqio, the sentinels are added to the model as
user-defined pieces, so text containing them tokenizes exactly as in t5x; a
`seqio.SentencePieceVocabulary` is accepted instead of a file and gives the same ids (tested).

Each caption becomes its pieces, truncated to `max_length - 1`, then EOS, then padding with 0:
the encoder always sees the EOS it was trained with, and the mask is `tokens != 0`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence, Union

import numpy as np
import sentencepiece
from sentencepiece import sentencepiece_model_pb2

PAD_ID = 0
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class TokenBatch:
    """Tokenized captions: `tokens` int32 [B, L] (0 = padding), `mask` bool [B, L], and
    `truncated` bool [B] for captions that lost pieces to the length limit."""

    tokens: np.ndarray
    mask: np.ndarray
    truncated: np.ndarray


def load_sentencepiece(path: Union[str, os.PathLike], extra_ids: int) -> sentencepiece.SentencePieceProcessor:
    """A processor for the model file at `path` with `extra_ids` sentinels appended (reversed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"sentencepiece vocabulary {os.fspath(path)!r} does not exist; set config.text.vocabulary "
            "(or --vocabulary) to a local copy of the model file, e.g. T5's cc_all.32000/sentencepiece.model"
        )
    model = sentencepiece_model_pb2.ModelProto()
    with open(path, "rb") as f:
        try:
            model.ParseFromString(f.read())
        except Exception as err:  # protobuf's DecodeError, raised for any damaged file
            raise ValueError(f"{os.fspath(path)!r} is not a sentencepiece model file ({err})") from None
    for i in reversed(range(extra_ids)):
        model.pieces.add(piece=f"▁<extra_id_{i}>", score=0.0, type=model.SentencePiece.USER_DEFINED)
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(model.SerializeToString())
    return processor


class _SentencePieceIds:
    """Adapter giving a sentencepiece processor the small interface the tokenizer needs."""

    def __init__(self, processor: sentencepiece.SentencePieceProcessor):
        self.processor = processor
        self.vocab_size = processor.GetPieceSize()
        self.pad_id, self.eos_id = processor.pad_id(), processor.eos_id()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.EncodeAsIds(texts)


class _SeqioIds:
    """Adapter for a `seqio.SentencePieceVocabulary` (or any seqio Vocabulary)."""

    def __init__(self, vocabulary):
        self.vocabulary = vocabulary
        self.vocab_size = vocabulary.vocab_size
        self.pad_id, self.eos_id = vocabulary.pad_id, vocabulary.eos_id

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(self.vocabulary.encode(t)) for t in texts]


class T5Tokenizer:
    """Captions -> fixed-length token ids and masks for the T5 encoder.

    `vocabulary` is a sentencepiece model file or a `seqio.SentencePieceVocabulary` (then
    `extra_ids` comes from the seqio object).
    """

    def __init__(self, vocabulary, max_length: int, extra_ids: int = 100):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if isinstance(vocabulary, (str, os.PathLike)):
            self._ids = _SentencePieceIds(load_sentencepiece(vocabulary, extra_ids))
        elif all(hasattr(vocabulary, a) for a in ("encode", "eos_id", "pad_id", "vocab_size")):
            self._ids = _SeqioIds(vocabulary)
        else:
            raise TypeError(f"vocabulary must be a sentencepiece model path or a seqio vocabulary, got {vocabulary!r}")
        if (self._ids.pad_id, self._ids.eos_id) != (PAD_ID, EOS_ID):
            raise ValueError(
                f"the vocabulary has pad id {self._ids.pad_id} and EOS id {self._ids.eos_id}; T5 needs pad 0 and EOS 1 "
                "(train sentencepiece with --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1)"
            )
        self.max_length = max_length

    @property
    def vocab_size(self) -> int:
        """Number of ids including extra ids (32100 for T5.1.1; the embedding has 32128 rows)."""
        return self._ids.vocab_size

    def __call__(self, texts: Sequence[str]) -> TokenBatch:
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"captions must be strings; entries {bad[:10]} are not")
        tokens = np.zeros((len(texts), self.max_length), np.int32)
        truncated = np.zeros(len(texts), bool)
        for row, ids in enumerate(self._ids.encode_batch(list(texts))):
            truncated[row] = len(ids) > self.max_length - 1
            ids = list(ids[: self.max_length - 1]) + [EOS_ID]
            tokens[row, : len(ids)] = ids
        return TokenBatch(tokens=tokens, mask=tokens != PAD_ID, truncated=truncated)
