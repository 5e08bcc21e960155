"""What the sampling job puts on every clip it writes: the watermark in every frame (MP4, GIF, NPZ, PNG all
come from the marked frames) and signed Content Credentials on the MP4.

`Stamp(config.provenance)` checks the settings before any model is built (a key or certificate that
does not load is named then, not after an hour of sampling; a configured signer is tried on a
two-frame clip, so a certificate C2PA refuses fails up front too). What cannot be done (no c2pa
extra, no signing key, watermark off, frames too small for a reliable mark) is said once per process
on stderr, and every clip's record says what it carries.
"""
from __future__ import annotations

import pathlib
import sys
import tempfile

import numpy as np

from lumiere_jax.provenance import credentials as cc
from lumiere_jax.provenance.watermark import BLOCK, MIN_RELIABLE_SIDE, Watermark

_said: set[str] = set()


def say_once(message: str) -> None:
    """Prints a provenance note on stderr the first time this process meets it (the demo samples six times)."""
    if message not in _said:
        _said.add(message)
        print(f"provenance: {message}", file=sys.stderr)


class Stamp:
    """The watermark and the signer of one sampling run; `checkpoints` (name -> SHA-256) is set once the
    models are loaded, and the watermark carries the base model's."""

    def __init__(self, p):
        self.watermark = Watermark(p.watermark_key, float(p.watermark_strength)) if p.watermark else None
        self.include_prompt = bool(p.include_prompt)
        self.credentials, self.unsigned = signer_of(p)
        self.checkpoints: dict[str, str] = {}

    def mark(self, frames: np.ndarray, keep: np.ndarray | None = None) -> tuple[np.ndarray, str]:
        """uint8 (T, H, W, 3) -> (the frames carrying the watermark, what the clip's record says of it); `keep`
        (T, H, W): a conditional task's known pixels, kept exactly (the mark is in the generated ones)."""
        if self.watermark is None:
            say_once("provenance.watermark is False: the files are not watermarked")
            return frames, "unmarked: provenance.watermark is False"
        size = f"{frames.shape[2]}x{frames.shape[1]}"
        side = min(frames.shape[1:3])
        if side < BLOCK:
            say_once(f"frames of {size} are smaller than one {BLOCK}x{BLOCK} block: they cannot carry the watermark "
                     "and are written unmarked")
            return frames, f"unmarked: {size} frames are too small"
        status = "marked"
        if side < MIN_RELIABLE_SIDE:
            say_once(f"frames of {size} are smaller than {MIN_RELIABLE_SIDE}x{MIN_RELIABLE_SIDE}, the smallest size "
                     "whose watermark reads back reliably after H.264 (README \"Provenance\"): the mark is embedded, "
                     "but an MP4 of this size may read as unmarked")
            status = "marked (below the reliable size)"
        return self.watermark.embed(frames, self.checkpoints["base"], keep), status

    def sign(self, mp4: pathlib.Path, generation: dict) -> str:
        """Signs the MP4 in place when a signer is configured; returns what its record says."""
        if self.credentials is None:
            say_once(f"the MP4s are not signed with Content Credentials: {self.unsigned}")
            return f"not signed: {self.unsigned}"
        unsigned = mp4.with_name(mp4.stem + ".unsigned" + mp4.suffix)
        mp4.rename(unsigned)
        try:
            cc.sign_mp4(self.credentials, unsigned, mp4, generation)
        finally:
            unsigned.unlink()
        return f"signed by {self.credentials.signer}"

    def generation(self, settings: dict, prompt: str, negative_prompt: str | None, seed_index: int) -> dict:
        """The manifest's GENERATION_LABEL assertion of one clip (the job adds what `mark` said): checkpoint
        hashes, task, sampler settings, seed (C2PA custom assertions read number lists back corrupted, so only scalars and dicts)."""
        sampler = {k: settings[k] for k in ("sampler", "num_steps", "guidance_scale", "threshold_percentile",
                                            "threshold_max", "resample", "strength") if settings.get(k) is not None}
        out = {f"{name}_checkpoint_sha256": digest for name, digest in self.checkpoints.items()}
        out.update(task=settings["task"], sampler=sampler, seed=settings["seed"], seed_index=seed_index,
                   num_frames=settings["num_frames"], fps=settings["fps"])
        if self.include_prompt:
            out["prompt"] = prompt
            if negative_prompt:
                out["negative_prompt"] = negative_prompt
        return out

    def describe(self) -> dict:
        """samples.json's account of the run's provenance (never the key)."""
        mark = None if self.watermark is None else {"strength": self.watermark.strength,
                                                    "payload": "LUMI + checkpoint_sha256[:8]"}
        return {"checkpoint_sha256": dict(self.checkpoints), "watermark": mark,
                "c2pa": f"signed by {self.credentials.signer}" if self.credentials else f"not signed: {self.unsigned}"}


def signer_of(p) -> tuple[cc.SigningCredentials | None, str]:
    """(credentials, "") when the MP4s can be signed, else (None, why not)."""
    if not p.signing_key and not p.certificate_chain:
        return None, ("no signing key (set provenance.signing_key and provenance.certificate_chain; "
                      "`python -m lumiere_jax.provenance make-dev-cert DIR` makes a local test pair)")
    if not p.signing_key or not p.certificate_chain:
        missing = "signing_key" if not p.signing_key else "certificate_chain"
        raise ValueError(f"provenance.{missing} is not set: C2PA signing needs both provenance.signing_key and "
                         "provenance.certificate_chain")
    if cc.c2pa_module() is None:
        return None, f"c2pa-python is not installed ({cc.INSTALL_HINT})"
    credentials = cc.SigningCredentials.load(p.signing_key, p.certificate_chain)
    try:
        try_signing(credentials)
    except ValueError as e:
        raise ValueError(f"provenance.certificate_chain {p.certificate_chain} is refused by C2PA ({e}): it needs an "
                         "end-entity certificate (not a CA; key usage digitalSignature; extended key usage "
                         "emailProtection; subject and authority key identifiers) followed by its CA, as make-dev-cert "
                         "writes") from e
    return credentials, ""


def try_signing(credentials: cc.SigningCredentials) -> None:
    """Signs a two-frame clip with the credentials: C2PA's own certificate checks, before any sampling."""
    from lumiere_jax.sample.video_io import write_mp4

    with tempfile.TemporaryDirectory() as tmp:
        source, dest = pathlib.Path(tmp) / "probe.mp4", pathlib.Path(tmp) / "signed.mp4"
        write_mp4(source, np.zeros((2, 16, 16, 3), np.uint8), 16.0)
        cc.sign_mp4(credentials, source, dest, {"probe": True})
