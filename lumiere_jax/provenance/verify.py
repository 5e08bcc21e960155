"""`--mode=verify`: for each video, is the watermark there, and what do its Content Credentials say.

Per file: the watermark decision with the share of the tag's bits recovered and the decoded checkpoint
hash prefix (checked against the manifest's hash when both are there), and the C2PA state: trusted
(the signer chains to one of verify.trust_anchors), valid_unknown_signer, invalid (with the failure
codes), or none. A file that cannot be decoded is reported with the reason, and the others are still
checked; only when no file could be read does the run fail.
"""
from __future__ import annotations

import math
import pathlib

import numpy as np

from lumiere_jax.evaluation.video_sets import VIDEO_SUFFIXES, read_video
from lumiere_jax.provenance import credentials as cc
from lumiere_jax.provenance.watermark import FOUND_TAG_BITS, HASH_BITS, TAG_BITS, Watermark

REPORT_NAME = "verify_report.json"
MAX_FRAMES = 256  # frames read per file: the vote is decided long before, and a film need not be decoded whole


def find_videos(spec: str) -> list[pathlib.Path]:
    """verify.input: one file, or every video under a directory (VIDEO_SUFFIXES, searched recursively)."""
    if not spec:
        raise ValueError("verify.input is not set: --config.verify.input=FILE_OR_DIR")
    path = pathlib.Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"verify.input {path} does not exist")
    if path.is_file():
        return [path]
    videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"verify.input {path} is a directory with no videos ({', '.join(VIDEO_SUFFIXES)})")
    return videos


def read_anchors(path: str) -> str:
    """The PEM text of verify.trust_anchors ('' when unset: every good signature then reads as an unknown signer)."""
    if not path:
        return ""
    try:
        text = pathlib.Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FileNotFoundError(f"verify.trust_anchors {path} cannot be read ({e})") from e
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ValueError(f"verify.trust_anchors {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def original_size(frames: np.ndarray) -> np.ndarray:
    """Frames that are an exact nearest-neighbour enlargement (the sampling job's GIF previews) brought back
    to the size the watermark was embedded at; other frames unchanged."""
    factor = math.gcd(*frames.shape[1:3])
    for k in sorted((d for d in range(2, factor + 1) if factor % d == 0), reverse=True):
        small = frames[:, ::k, ::k]
        enlarged = lambda x: x.repeat(k, axis=1).repeat(k, axis=2)  # noqa: E731
        if np.array_equal(enlarged(small[:1]), frames[:1]) and np.array_equal(enlarged(small), frames):
            return small
    return frames


def verify_file(path: pathlib.Path, watermark: Watermark, anchors: str) -> dict:
    """One file's entry of the report."""
    entry = {"file": str(path)}
    try:
        frames = read_video(path, MAX_FRAMES)
    except ValueError as e:
        return dict(entry, error=str(e))
    mark = watermark.detect(original_size(frames)).to_json()
    if cc.c2pa_module() is None:
        manifest = {"state": "not_checked", "reason": f"c2pa-python is not installed ({cc.INSTALL_HINT})"}
    else:
        manifest = cc.read_manifest(path, anchors)
    signed_hash = (manifest.get("generation") or {}).get("base_checkpoint_sha256")
    if mark["found"] and signed_hash:
        mark["matches_manifest"] = signed_hash.startswith(mark["checkpoint_sha256_prefix"])
    return dict(entry, watermark=mark, c2pa=manifest)


def verify(config) -> tuple[dict, str]:
    """The report (written by the caller) and its table for every file of config.verify.input."""
    watermark = Watermark(config.provenance.watermark_key, float(config.provenance.watermark_strength))
    paths = find_videos(config.verify.input)
    anchors = read_anchors(config.verify.trust_anchors)
    files = [verify_file(path, watermark, anchors) for path in paths]
    if all("error" in f for f in files):
        raise ValueError("no file could be read: " + "; ".join(f["error"] for f in files))
    report = {"input": config.verify.input, "trust_anchors": config.verify.trust_anchors or None,
              "watermark_rule": f"found when >= {FOUND_TAG_BITS} of the {TAG_BITS} tag bits are recovered; the "
                                f"payload also carries the first {HASH_BITS} bits of the checkpoint's SHA-256",
              "files": files}
    return report, table(files, pathlib.Path(config.verify.input))


def table(files: list[dict], root: pathlib.Path) -> str:
    """One row per file: watermark, decoded checkpoint prefix, C2PA state, what the manifest says."""
    rows = [("file", "watermark", "checkpoint", "c2pa", "manifest says")]
    for f in files:
        name = str(pathlib.Path(f["file"]).relative_to(root)) if root.is_dir() else f["file"]
        if "error" in f:
            rows.append((name, "unreadable", "", "", f["error"]))
            continue
        rows.append((name, describe_mark(f["watermark"]), f["watermark"]["checkpoint_sha256_prefix"] or "",
                     describe_state(f["c2pa"]), describe_manifest(f["c2pa"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def describe_mark(mark: dict) -> str:
    bits = round(mark["tag_bits_recovered"] * TAG_BITS)
    text = f"{'found' if mark['found'] else 'not found'} ({bits}/{TAG_BITS} tag bits)"
    if mark.get("matches_manifest") is False:
        text += ", differs from the manifest's hash"
    return text if mark["reliable_size"] else text + ", below the reliable size"


def describe_state(manifest: dict) -> str:
    if manifest["state"] == "invalid":
        return "invalid: " + ", ".join(manifest["failures"])
    return manifest["state"]


def describe_manifest(manifest: dict) -> str:
    """The actions, the software agent and our generation assertion's task and seed, in a few words."""
    if manifest["state"] in ("none", "not_checked"):
        return manifest.get("reason", "")
    actions = [f"{a.get('action')} ({a.get('digitalSourceType', '').rsplit('/', 1)[-1]})" for a in manifest["actions"]]
    generation = manifest.get("generation") or {}
    said = actions + [f"{k}={generation[k]}" for k in ("task", "seed", "seed_index") if k in generation]
    signer = manifest.get("signer", {}).get("common_name")
    return "; ".join(said + ([f"signed by {signer}"] if signer else []))
