"""An invisible watermark in the blue-difference chroma (Cb) of every frame, read back after H.264.

Method (the DWT-SVD family of image watermarks, probed on these machines: DESIGN.md section 8):
each 8x8 pixel block of a frame's Cb channel gives the 4x4 block of its one-level Haar approximation
band (the LL coefficients are twice the mean of each 2x2 pixel square), and one bit is written into
that block's largest singular value by quantisation index modulation: the value moves to the nearest
point of the lattice `strength * (k + bit / 2)`. Why these choices:
- the LL band is what yuv420p keeps of chroma (its 2x2 subsampling averages the same squares), so
  H.264's chroma subsampling leaves the mark alone; the largest singular value of a block is its
  energy, the thing lossy coding preserves best;
- a 2-D orthonormal DCT of the block (the "DCT" of DWT-DCT-SVD) has the same singular values, so it
  changes nothing here and is left out;
- Cb rather than luma: the eye is least sensitive to blue-yellow changes, and on luma the bits came
  back inverted after the RGB -> limited-range yuv420p round trip.

Payload: PAYLOAD_BITS = 64 bits, a 32-bit project tag (b"LUMI") and the first 32 bits of the model
checkpoint's SHA-256. Block b of frame t carries payload bit (rank(b) + t * blocks) mod 64, where
rank is a key-derived permutation of the frame's blocks, XORed with a key-derived bit for that
(frame, block): the expected pattern is pseudo-random, so the bits read from unmarked video agree
with it only by chance, whatever the content. The payload is decoded by a majority vote over every
block of every frame that carries a bit, and the mark is declared found when at least
FOUND_TAG_BITS of the 32 tag bits come back (about 1 in 10^5 by chance for unmarked video).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np

TAG = b"LUMI"
TAG_BITS = 8 * len(TAG)
_TAG_PATTERN = np.unpackbits(np.frombuffer(TAG, np.uint8))
HASH_BITS = 32
PAYLOAD_BITS = TAG_BITS + HASH_BITS
FOUND_TAG_BITS = 28  # of TAG_BITS: P(>= 28 of 32 fair coins) = 9.7e-6
BLOCK = 8  # pixels per side of the block that carries one bit (a 4x4 block of the LL band)
DEFAULT_STRENGTH = 64.0  # the lattice step of the largest singular value (README "Provenance": PSNR ~40 dB)
MIN_RELIABLE_SIDE = 128  # below this frame side the bits are not reliably read after H.264 (measured)
EMBED_PASSES = 2  # the second pass corrects what rounding to uint8 and clipping to [0, 255] undid
_CB_FROM_RGB = np.array([-0.168736, -0.331264, 0.5])  # BT.601 full range, as JPEG
_RGB_PER_CB = np.array([0.0, -0.344136, 1.772])  # the RGB change that moves Cb by 1 with Y and Cr fixed
_RGB_PER_CB_FALLBACK = np.array([-2.0, -2.0, 0.0])  # moves Cb by 1 through red and green (and luma) alone


def payload(checkpoint_sha256: str) -> np.ndarray:
    """The 64 payload bits (uint8 0/1): the tag, then the first 32 bits of the checkpoint's hash."""
    try:
        digest = bytes.fromhex(checkpoint_sha256[:HASH_BITS // 4])
    except ValueError:
        digest = b""
    if len(digest) != HASH_BITS // 8:
        raise ValueError(f"checkpoint hash {checkpoint_sha256!r} is not a hex digest of at least {HASH_BITS} bits")
    return np.unpackbits(np.frombuffer(TAG + digest, np.uint8))


@dataclasses.dataclass(frozen=True)
class Detection:
    """What a clip's frames say: `bits` the decoded payload (None when no block could be read)."""

    bits: np.ndarray | None
    frames: int
    blocks: int  # blocks read, over all frames
    side: int  # the frames' smaller side

    @property
    def tag_share(self) -> float:
        """The share of the tag's bits recovered (0.5 expected by chance)."""
        return 0.0 if self.bits is None else float(np.mean(self.bits[:TAG_BITS] == _TAG_PATTERN))

    @property
    def found(self) -> bool:
        """The decision: enough tag bits that chance is ruled out (FOUND_TAG_BITS)."""
        return self.tag_share * TAG_BITS >= FOUND_TAG_BITS

    @property
    def checkpoint_hash(self) -> str | None:
        """The decoded first 32 bits of the checkpoint's SHA-256 (hex), when the mark is found."""
        return np.packbits(self.bits[TAG_BITS:]).tobytes().hex() if self.found else None

    def to_json(self) -> dict:
        """The report's account (reliable_size: the frames are at least MIN_RELIABLE_SIDE on each side)."""
        return {"found": self.found, "tag_bits_recovered": round(self.tag_share, 4),
                "checkpoint_sha256_prefix": self.checkpoint_hash, "frames": self.frames, "blocks_read": self.blocks,
                "reliable_size": self.side >= MIN_RELIABLE_SIDE}


@dataclasses.dataclass(frozen=True)
class Watermark:
    """The mark of one key and strength: `embed` writes it into frames, `detect` reads it back."""

    key: str
    strength: float = DEFAULT_STRENGTH

    def __post_init__(self):
        if not isinstance(self.key, str) or not self.key:
            raise ValueError(f"provenance.watermark_key={self.key!r} must be a non-empty string (the detector "
                             "needs the same key)")
        if not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength) or self.strength <= 0:
            raise ValueError(f"provenance.watermark_strength={self.strength!r} must be a positive number "
                             f"(default {DEFAULT_STRENGTH}: larger is more robust and more visible)")

    def embed(self, frames: np.ndarray, checkpoint_sha256: str, keep: np.ndarray | None = None) -> np.ndarray:
        """uint8 (T, H, W, 3) -> the same frames carrying payload(checkpoint_sha256). `keep` (T, H, W) bool:
        pixels left exactly as they are (a conditional task's known pixels: the user's input, not generated)."""
        frames = check_frames(frames)
        t, h, w, _ = frames.shape
        if h < BLOCK or w < BLOCK:
            return frames
        free = 1.0 if keep is None else ~np.broadcast_to(keep, frames.shape[:3])
        index, flip = self._layout(t, (h // BLOCK) * (w // BLOCK))
        want = payload(checkpoint_sha256)[index] ^ flip
        out = frames.astype(np.float64)
        for _ in range(EMBED_PASSES):
            cb = chroma(np.clip(np.round(out), 0, 255))
            u, s, vt = np.linalg.svd(ll_blocks(cb))
            top = s[..., 0]
            target = self.strength * (np.round(top / self.strength - want / 2) + want / 2)
            change = (target - top)[..., None, None] * u[..., :, :1] * vt[..., :1, :]
            out += rgb_change(out, free * pixel_change(change, cb.shape))
        return np.clip(np.round(out), 0, 255).astype(np.uint8)

    def detect(self, frames: np.ndarray) -> Detection:
        """Reads the payload from uint8 (T, H, W, 3) frames by a majority vote over all their blocks."""
        frames = check_frames(frames)
        blocks = ll_blocks(chroma(frames))
        t, n = blocks.shape[:2]
        side = min(frames.shape[1:3])
        if n == 0:
            return Detection(None, t, 0, side)
        top = np.linalg.svd(blocks, compute_uv=False)[..., 0]
        phase = np.mod(top / self.strength, 1.0)
        read = ((phase >= 0.25) & (phase < 0.75)).astype(np.uint8)
        index, flip = self._layout(t, n)
        votes = np.bincount(index.ravel(), weights=(read ^ flip).ravel(), minlength=PAYLOAD_BITS)
        counts = np.bincount(index.ravel(), minlength=PAYLOAD_BITS)
        return Detection((2 * votes > counts).astype(np.uint8), t, t * n, side)

    def _layout(self, frames: int, blocks: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, blocks) payload bit index and key bit of every block: a key-derived permutation of the
        blocks, rotated by `blocks` per frame (small frames spread the payload over several frames),
        and a key stream per frame."""
        order = np.frombuffer(key_stream(self.key, f"order:{blocks}", 4 * blocks), "<u4")
        rank = np.argsort(np.argsort(order, kind="stable"), kind="stable")
        index = (rank[None, :] + blocks * np.arange(frames)[:, None]) % PAYLOAD_BITS
        flip = np.stack([np.unpackbits(np.frombuffer(key_stream(self.key, f"bits:{blocks}:{t}", -(-blocks // 8)),
                                                     np.uint8))[:blocks] for t in range(frames)])
        return index, flip


def key_stream(key: str, label: str, size: int) -> bytes:
    """`size` pseudo-random bytes of (key, label): SHAKE-256, fixed by its standard (a seeded numpy
    generator's stream may change between numpy versions, and old videos must stay readable)."""
    return hashlib.shake_256(f"lumiere_jax watermark\0{key}\0{label}".encode()).digest(size)


def check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"the watermark reads uint8 RGB frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    return frames


def chroma(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) RGB -> (T, H, W) Cb, float64 (BT.601 full range)."""
    return 128.0 + np.asarray(frames, np.float64) @ _CB_FROM_RGB


def ll_blocks(cb: np.ndarray) -> np.ndarray:
    """(T, H, W) -> (T, blocks, 4, 4): the Haar LL band of every whole 8x8 block, row-major."""
    t, h, w = cb.shape
    rows, cols = h // BLOCK, w // BLOCK
    ll = cb[:, :rows * BLOCK, :cols * BLOCK].reshape(t, rows * 4, 2, cols * 4, 2).sum(axis=(2, 4)) / 2
    return ll.reshape(t, rows, 4, cols, 4).transpose(0, 1, 3, 2, 4).reshape(t, rows * cols, 4, 4)


def rgb_change(rgb: np.ndarray, cb_change: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) float RGB and (T, H, W) Cb changes -> the RGB changes that make them inside [0, 255].

    The change keeps luma and Cr where it fits (it moves blue one way and green a little the other way);
    where it would leave the range (black cannot lose blue, white cannot gain it) it is scaled down to fit
    and the rest moves red and green instead: pure black and white regions then still carry the mark, at
    a small luma cost.
    """
    up = cb_change > 0
    room = np.minimum(np.where(up, 255.0 - rgb[..., 2], rgb[..., 2]) / _RGB_PER_CB[2],
                      np.where(up, rgb[..., 1], 255.0 - rgb[..., 1]) / -_RGB_PER_CB[1])
    fits = np.clip(room / np.maximum(np.abs(cb_change), 1e-9), 0.0, 1.0)
    return (fits * cb_change)[..., None] * _RGB_PER_CB + ((1.0 - fits) * cb_change)[..., None] * _RGB_PER_CB_FALLBACK


def pixel_change(change: np.ndarray, shape: tuple) -> np.ndarray:
    """(T, blocks, 4, 4) LL changes -> (T, H, W) Cb changes: the inverse Haar step with the detail
    bands kept puts half an LL coefficient's change on each pixel of its 2x2 square."""
    t, h, w = shape
    rows, cols = h // BLOCK, w // BLOCK
    ll = change.reshape(t, rows, cols, 4, 4).transpose(0, 1, 3, 2, 4).reshape(t, rows * 4, cols * 4)
    out = np.zeros(shape)
    out[:, :rows * BLOCK, :cols * BLOCK] = ll.repeat(2, axis=1).repeat(2, axis=2) / 2
    return out
