"""The clip/caption record: defined once, used by the jobs that write shards and the pipeline.

One record is one clip (an image is a 1-frame clip, so one format serves text-to-image and
text-to-video training). Its bytes, one ArrayRecord entry:

    b"LJCR" | uint16 schema version | uint32 header length | header (UTF-8 JSON) | blobs

The header holds the scalar fields (id, caption, fps, meta) and, for every frame stack and
array, its shape, codec or dtype and the index of its first blob; `blob_sizes` gives the byte
length of every blob in order. Frames are one blob per frame, so a reader that needs 16 frames
of an 80-frame clip decodes 16 (`RecordView.frames(start, stop)`).

Fields:
  id               stable identifier (source + position), unique within a dataset
  caption          the text prompt
  fps              frames per second of `frames`
  frames           (T, H, W, 3) uint8, stored per frame as JPEG (default), PNG or raw bytes
  hires            {H': (T, H', W', 3) uint8}: higher-resolution copies of the same frames (SSR)
  annotations      {name: array}: ground truth, e.g. 'positions' (T, 2) for synthetic shapes
  text_embeddings  (L, D) bfloat16 precomputed encoder output, with text_mask (L,) bool; or
                   absent, with the embeddings in the store `<shard stem>.t5/` next to the shard
                   (lumiere_jax.text.embedding_store), found by record id
  meta             JSON-serialisable provenance (source file, start time, labels, ...)

Schema versions: 1 is the first. A reader refuses a version it does not know, naming it.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
import struct
from typing import Any, Optional

import ml_dtypes
import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
MAGIC = b"LJCR"
CODECS = ("jpeg", "png", "raw")
DEFAULT_JPEG_QUALITY = 95

_PREFIX = struct.Struct("<4sHI")  # magic, schema version, header length
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
_TEXT_ARRAYS = ("text_embeddings", "text_mask")
_ANNOTATION_PREFIX = "annotations/"


class RecordError(ValueError):
    """A record that cannot be read: malformed bytes, unknown schema version, undecodable frame."""


@dataclasses.dataclass
class ClipRecord:
    """One clip (or image, T = 1) with its caption and optional extras, decoded to numpy."""

    id: str
    caption: str
    frames: np.ndarray
    fps: float
    hires: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    annotations: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    text_embeddings: Optional[np.ndarray] = None
    text_mask: Optional[np.ndarray] = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def validate(self) -> None:
        """Raises ValueError naming the first field that the schema cannot store as given."""
        where = f"record {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"record id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.caption, str):
            raise ValueError(f"{where}: caption must be a string, got {type(self.caption).__name__}")
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"{where}: fps must be a positive number, got {self.fps!r}")
        _check_frames(self.frames, f"{where}: frames")
        for size, stack in self.hires.items():
            _check_frames(stack, f"{where}: hires[{size}]")
            if stack.shape[0] != self.num_frames or stack.shape[1] != size or size == self.frames.shape[1]:
                raise ValueError(
                    f"{where}: hires[{size}] has shape {stack.shape}; it must hold the same "
                    f"{self.num_frames} frames with height {size}, unlike the base frames' {self.frames.shape[1]}"
                )
        for name, array in self.annotations.items():
            if not name or "/" in name:
                raise ValueError(f"{where}: annotation name {name!r} must be non-empty without '/'")
            _dtype_name(np.asarray(array).dtype, f"{where}: annotations[{name!r}]")
        if (self.text_embeddings is None) != (self.text_mask is None):
            raise ValueError(f"{where}: text_embeddings and text_mask must be given together")
        if self.text_embeddings is not None:
            emb, mask = np.asarray(self.text_embeddings), np.asarray(self.text_mask)
            if emb.ndim != 2 or mask.shape != emb.shape[:1]:
                raise ValueError(
                    f"{where}: text_embeddings must be (L, D) and text_mask (L,); got "
                    f"{emb.shape} and {mask.shape}"
                )
        try:
            json.dumps(self.meta)
        except TypeError as e:
            raise ValueError(f"{where}: meta must be JSON-serialisable ({e})") from None


def _check_frames(frames: np.ndarray, what: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array, got {getattr(frames, 'dtype', type(frames))}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape) < 1:
        raise ValueError(f"{what} must have shape (T, H, W, 3) with T, H, W >= 1, got {frames.shape}")


def _dtype_name(dtype: np.dtype, what: str) -> str:
    """The name a dtype is stored under; only plain numeric types (and bfloat16) are allowed."""
    if dtype == ml_dtypes.bfloat16:
        return "bfloat16"
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} has dtype {dtype}; store numeric (bool/int/uint/float) arrays only")
    return dtype.name


def _dtype_from_name(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    dtype = np.dtype(name)
    if dtype.kind not in "biuf":
        raise TypeError(name)
    return dtype


# ----------------------------------------------------------------------------------- encoding


def encode_frame(frame: np.ndarray, codec: str, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Bytes of one (H, W, 3) uint8 frame in `codec` (JPEG with 4:2:0 chroma, PIL's default)."""
    if codec == "raw":
        return np.ascontiguousarray(frame).tobytes()
    buf = io.BytesIO()
    options = {"quality": int(quality)} if codec == "jpeg" else {}
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, format=_PIL_FORMATS[codec], **options)
    return buf.getvalue()


class _BlobList:
    """Collects blobs and hands out their indices, so the header can point at them."""

    def __init__(self):
        self.blobs: list[bytes] = []

    def add(self, blob: bytes) -> int:
        self.blobs.append(blob)
        return len(self.blobs) - 1


def _frames_entry(stack: np.ndarray, codec: str, quality: int, blobs: _BlobList) -> dict:
    first = len(blobs.blobs)
    for frame in stack:
        blobs.add(encode_frame(frame, codec, quality))
    return {"codec": codec, "shape": list(stack.shape), "blob": first}


def _array_entry(array: np.ndarray, what: str, blobs: _BlobList) -> dict:
    array = np.ascontiguousarray(array)
    return {"dtype": _dtype_name(array.dtype, what), "shape": list(array.shape), "blob": blobs.add(array.tobytes())}


def encode_record(record: ClipRecord, codec: str = "jpeg", quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """Serialises `record` (validated first) with every frame stack stored in `codec`."""
    if codec not in CODECS:
        raise ValueError(f"codec {codec!r} is not one of {CODECS}")
    if codec == "jpeg" and not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    record.validate()
    blobs = _BlobList()
    header: dict[str, Any] = {
        "id": record.id,
        "caption": record.caption,
        "fps": float(record.fps),
        "meta": record.meta,
        "frames": _frames_entry(record.frames, codec, quality, blobs),
        "hires": {
            str(size): _frames_entry(stack, codec, quality, blobs) for size, stack in sorted(record.hires.items())
        },
        "arrays": {},
    }
    for name, array in sorted(record.annotations.items()):
        key = _ANNOTATION_PREFIX + name
        header["arrays"][key] = _array_entry(np.asarray(array), key, blobs)
    if record.text_embeddings is not None:
        emb = np.asarray(record.text_embeddings).astype(ml_dtypes.bfloat16)
        header["arrays"]["text_embeddings"] = _array_entry(emb, "text_embeddings", blobs)
        header["arrays"]["text_mask"] = _array_entry(np.asarray(record.text_mask).astype(bool), "text_mask", blobs)
    header["blob_sizes"] = [len(b) for b in blobs.blobs]
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return b"".join([_PREFIX.pack(MAGIC, SCHEMA_VERSION, len(head)), head, *blobs.blobs])


# ----------------------------------------------------------------------------------- decoding


class RecordView:
    """A parsed record whose frames and arrays are decoded only when asked for.

    Parsing checks the whole layout (magic, version, header fields, blob bounds), so a record
    that parses has every blob where the header says; frame bytes are checked when decoded.
    """

    def __init__(self, data: bytes):
        self._data = memoryview(data)
        self._header, payload_start = _parse_header(self._data)
        self._where = f"record {self._header['id']!r}"
        self._offsets = np.concatenate([[0], np.cumsum(self._header["blob_sizes"], dtype=np.int64)]) + payload_start
        self._stacks = {int(self._header["frames"]["shape"][1]): self._header["frames"]}
        for size, entry in self._header["hires"].items():
            if not size.isdigit() or int(size) in self._stacks:
                raise RecordError(f"{self._where}: hires key {size!r} must be a new frame height")
            self._stacks[int(size)] = entry
        self._check_layout()

    @property
    def id(self) -> str:
        return self._header["id"]

    @property
    def caption(self) -> str:
        return self._header["caption"]

    @property
    def fps(self) -> float:
        return self._header["fps"]

    @property
    def meta(self) -> dict[str, Any]:
        return self._header["meta"]

    @property
    def num_frames(self) -> int:
        return int(self._header["frames"]["shape"][0])

    @property
    def shape(self) -> tuple[int, ...]:
        """(T, H, W, 3) of the base frames."""
        return self.frames_shape()

    @property
    def sizes(self) -> tuple[int, ...]:
        """Frame heights available: the base frames' first, then the hires copies'."""
        return tuple(self._stacks)

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(self._header["arrays"])

    def frames_shape(self, size: Optional[int] = None) -> tuple[int, ...]:
        """(T, H, W, 3) of the stack of height `size` (default: the base frames), undecoded."""
        return tuple(self._stacks[self.sizes[0] if size is None else size]["shape"])

    def _blob(self, index: int) -> memoryview:
        return self._data[self._offsets[index] : self._offsets[index + 1]]

    def _check_layout(self) -> None:
        """Checks that every stack and array points at blobs that exist and fit its shape."""
        sizes = self._header["blob_sizes"]
        if self._offsets[-1] != len(self._data):
            raise RecordError(
                f"{self._where}: blobs end at byte {self._offsets[-1]} but the record has {len(self._data)} "
                "bytes (truncated or padded record)"
            )
        for height, entry in self._stacks.items():
            t, h, w, c = entry["shape"]
            if t != self.num_frames or h != height or c != 3 or min(t, h, w) < 1:
                raise RecordError(f"{self._where}: frame stack of height {height} has bad shape {entry['shape']}")
            if entry["blob"] < 0 or entry["blob"] + t > len(sizes):
                raise RecordError(f"{self._where}: frame stack of height {height} points past the last blob")
            if entry["codec"] == "raw" and any(sizes[entry["blob"] + i] != h * w * 3 for i in range(t)):
                raise RecordError(f"{self._where}: raw frames of height {height} are not {h}x{w}x3 bytes each")
        for name, entry in self._header["arrays"].items():
            n = int(np.prod(entry["shape"], dtype=np.int64)) * _dtype_from_name(entry["dtype"]).itemsize
            if not 0 <= entry["blob"] < len(sizes) or sizes[entry["blob"]] != n:
                raise RecordError(f"{self._where}: array {name!r} does not match its blob ({entry})")
        if sum(name in self._header["arrays"] for name in _TEXT_ARRAYS) == 1:
            raise RecordError(f"{self._where}: has only one of {_TEXT_ARRAYS}; they come together")

    def frames(self, start: int = 0, stop: Optional[int] = None, size: Optional[int] = None) -> np.ndarray:
        """Decodes frames [start, stop) of the stack of height `size` (default: the base frames)."""
        size = self.sizes[0] if size is None else size
        if size not in self._stacks:
            raise KeyError(f"{self._where} has frames of heights {self.sizes}, not {size}")
        entry = self._stacks[size]
        t, h, w, _ = entry["shape"]
        stop = t if stop is None else stop
        if not 0 <= start < stop <= t:
            raise IndexError(f"{self._where}: frames [{start}, {stop}) is outside its {t} frames")
        out = np.empty((stop - start, h, w, 3), np.uint8)
        for i in range(start, stop):
            blob = self._blob(entry["blob"] + i)
            out[i - start] = _decode_frame(blob, entry["codec"], h, w, f"{self._where} frame {i}")
        return out

    def array(self, name: str) -> Optional[np.ndarray]:
        """The stored array `name` ('text_embeddings', 'annotations/positions', ...) or None."""
        entry = self._header["arrays"].get(name)
        if entry is None:
            return None
        dtype = _dtype_from_name(entry["dtype"])
        return np.frombuffer(self._blob(entry["blob"]), dtype).reshape(entry["shape"]).copy()

    def to_record(self) -> ClipRecord:
        """Decodes everything into a ClipRecord."""
        base = self.sizes[0]
        return ClipRecord(
            id=self.id,
            caption=self.caption,
            frames=self.frames(),
            fps=self.fps,
            hires={size: self.frames(size=size) for size in self.sizes if size != base},
            annotations={
                name[len(_ANNOTATION_PREFIX) :]: self.array(name)
                for name in self.array_names
                if name.startswith(_ANNOTATION_PREFIX)
            },
            text_embeddings=self.array("text_embeddings"),
            text_mask=self.array("text_mask"),
            meta=self.meta,
        )


def parse_record(data: bytes) -> RecordView:
    """Parses record bytes; raises RecordError saying what is wrong with them."""
    return RecordView(data)


def decode_record(data: bytes) -> ClipRecord:
    """Parses and fully decodes record bytes."""
    return RecordView(data).to_record()


def _parse_header(data: memoryview) -> tuple[dict[str, Any], int]:
    """The checked header and the offset where the blobs start."""
    if len(data) < _PREFIX.size:
        raise RecordError(f"record is {len(data)} bytes, shorter than the {_PREFIX.size}-byte prefix")
    magic, version, head_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise RecordError(f"record starts with {bytes(magic)!r}, not {MAGIC!r}: not a lumiere_jax clip record")
    if version != SCHEMA_VERSION:
        raise RecordError(
            f"record schema version {version} is unknown to this reader (it reads version {SCHEMA_VERSION}); "
            "use the lumiere_jax version that wrote the shards or rewrite them"
        )
    try:
        header = json.loads(bytes(data[_PREFIX.size : _PREFIX.size + head_len]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"record header is not valid JSON ({e})") from None
    _check_header_types(header)
    return header, _PREFIX.size + head_len


_HEADER_TYPES = {
    "id": str,
    "caption": str,
    "fps": (int, float),
    "meta": dict,
    "frames": dict,
    "hires": dict,
    "arrays": dict,
    "blob_sizes": list,
}


def _check_header_types(header: Any) -> None:
    """Checks every header field exists with its type; the message names the first that does not."""
    if not isinstance(header, dict):
        raise RecordError(f"record header must be a JSON object, got {type(header).__name__}")
    for key, kind in _HEADER_TYPES.items():
        if not isinstance(header.get(key), kind):
            raise RecordError(f"record {header.get('id')!r}: header field {key!r} is missing or not {kind}")
    where = f"record {header['id']!r}"
    if not all(isinstance(s, int) and s >= 0 for s in header["blob_sizes"]):
        raise RecordError(f"{where}: blob_sizes must be non-negative integers")
    for name, entry in [("frames", header["frames"]), *header["hires"].items()]:
        ok = (
            isinstance(entry, dict)
            and entry.get("codec") in CODECS
            and _int_list(entry.get("shape"), 4)
            and isinstance(entry.get("blob"), int)
        )
        if not ok:
            raise RecordError(f"{where}: frame stack {name!r} needs codec in {CODECS}, a 4-d shape and a blob index")
    for name, entry in header["arrays"].items():
        ok = isinstance(entry, dict) and _int_list(entry.get("shape")) and isinstance(entry.get("blob"), int)
        try:
            _dtype_from_name(entry["dtype"])
        except (TypeError, KeyError):
            ok = False
        if not ok:
            raise RecordError(f"{where}: array {name!r} needs a numeric dtype, a shape and a blob index")


def _int_list(value: Any, length: Optional[int] = None) -> bool:
    return (
        isinstance(value, list)
        and all(isinstance(v, int) and v >= 0 for v in value)
        and (length is None or len(value) == length)
    )


def _decode_frame(blob: memoryview, codec: str, h: int, w: int, what: str) -> np.ndarray:
    if codec == "raw":
        return np.frombuffer(blob, np.uint8).reshape(h, w, 3)
    try:
        with Image.open(io.BytesIO(blob), formats=[_PIL_FORMATS[codec]]) as image:
            if image.mode != "RGB" or image.size != (w, h):
                raise RecordError(f"{what}: decoded {image.mode} {image.size[0]}x{image.size[1]}, expected RGB {w}x{h}")
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for undecodable image bytes
        if isinstance(e, RecordError):
            raise
        raise RecordError(f"{what}: {codec} bytes do not decode ({e})") from None
