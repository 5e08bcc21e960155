"""ArrayRecord shard files of clip records: naming, complete-or-absent writing, reading back.

Next to every shard `<stem>.array_record` its writer leaves `<stem>.jsonl`, one
{"id", "caption"} line per record in shard order: the input of
`data_pipelines.encode_captions`, whose `<stem>.t5/` embedding store the pipeline then finds
next to the shard.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from array_record.python import array_record_module

from lumiere_jax.data.schema import DEFAULT_JPEG_QUALITY, ClipRecord, RecordView, encode_record, parse_record

SHARD_SUFFIX = ".array_record"
TMP_SUFFIX = ".tmp"
_READ_CHUNK = 64


def shard_name(prefix: str, index: int, count: int) -> str:
    """`prefix-00003-of-00016.array_record`: sorted names list shards in order."""
    return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def captions_path(shard_path: str) -> str:
    """`<stem>.jsonl` next to `<stem>.array_record`."""
    return shard_path[: -len(SHARD_SUFFIX)] + ".jsonl"


def writer_options(codec: str) -> str:
    """One record per group (random access reads one record); compress only raw pixels,
    since JPEG/PNG bytes do not shrink and would cost decompression time in every read."""
    return "group_size:1," + ("zstd:3" if codec == "raw" else "uncompressed")


class ShardWriter:
    """Writes one shard (and its caption list) under temporary names, renamed when closed cleanly.

    The shard is renamed last, so a shard file that exists is complete, with its caption list:
    what lets the jobs resume by keeping the shards they find and rewriting the rest.
    """

    def __init__(self, path: str, codec: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY):
        if not path.endswith(SHARD_SUFFIX):
            raise ValueError(f"shard path {path} must end with {SHARD_SUFFIX}")
        self.path = path
        self.codec = codec
        self.quality = quality
        self.num_records = 0
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._writer = array_record_module.ArrayRecordWriter(path + TMP_SUFFIX, writer_options(codec))
        self._captions = open(captions_path(path) + TMP_SUFFIX, "w", encoding="utf-8")

    def write(self, record: ClipRecord) -> None:
        self.write_encoded(encode_record(record, self.codec, self.quality), record.id, record.caption)

    def write_encoded(self, data: bytes, record_id: str, caption: str) -> None:
        """Appends an already encoded record (encoding errors belong to the record, these to the file)."""
        self._writer.write(data)
        self._captions.write(json.dumps({"id": record_id, "caption": caption}, ensure_ascii=False) + "\n")
        self.num_records += 1

    def close(self) -> None:
        """Finishes both files and gives them their final names, the shard last."""
        self._captions.close()
        self._writer.close()
        os.replace(captions_path(self.path) + TMP_SUFFIX, captions_path(self.path))
        os.replace(self.path + TMP_SUFFIX, self.path)

    def abort(self) -> None:
        """Drops the unfinished files, leaving no shard behind."""
        self._captions.close()
        self._writer.close()
        os.remove(captions_path(self.path) + TMP_SUFFIX)
        os.remove(self.path + TMP_SUFFIX)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def open_reader(path: str) -> array_record_module.ArrayRecordReader:
    """An ArrayRecord reader, with an error naming the file when it is not a shard."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"shard {path} does not exist")
    error = "unknown error"
    try:
        reader = array_record_module.ArrayRecordReader(path)
        if reader.ok():
            return reader
        reader.close()  # a reader that failed to open reports why when closed
    except RuntimeError as e:
        error = str(e)
    raise ValueError(f"{path} is not a readable ArrayRecord shard ({error}); rewrite it with a data_pipelines job")


def iter_views(path: str) -> Iterator[RecordView]:
    """Parses every record of one shard, in order, decoding no frames (captions and meta are free)."""
    reader = open_reader(path)
    try:
        n = reader.num_records()
        for start in range(0, n, _READ_CHUNK):
            for data in reader.read(list(range(start, min(n, start + _READ_CHUNK)))):
                yield parse_record(data)
    finally:
        reader.close()


def iter_records(path: str) -> Iterator[ClipRecord]:
    """Decodes every record of one shard, in order."""
    for view in iter_views(path):
        yield view.to_record()
