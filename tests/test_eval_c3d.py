"""C3D (UCF101) for the Inception Score: the NNX network against an independent torch C3D in
chainer's NCDHW semantics on the same random weights written in TGAN's npz layout, the
preprocessing against a direct numpy restatement of tgan2's pipeline, and the loader's errors."""
import time

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from lumiere_jax.evaluation import c3d
from lumiere_jax.evaluation.network_weights import WeightsMismatch
from metrics_helpers import CONVS, SMALL_C3D as SMALL, chainer_arrays, raw_mean

POOLS = {"conv1a": (1, 2, 2), "conv2a": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2), "conv5b": (2, 2, 2)}


def torch_c3d(arrays, x_nthwc: np.ndarray, dtype=torch.float64, flatten_channels_last: bool = False) -> np.ndarray:
    """C3D written from chainer's definition in NCDHW: conv3d pad 1 + ReLU, max_pool3d whose
    ceil_mode gives cover_all's output count, Linear on the (C, T, H, W) flattening."""
    t = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in arrays.items()}
    h = torch.from_numpy(np.array(x_nthwc)).to(dtype).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        for name in CONVS:
            h = F.relu(F.conv3d(h, t[f"{name}/W"], t[f"{name}/b"], padding=1))
            if name in POOLS:
                h = F.max_pool3d(h, POOLS[name], POOLS[name], ceil_mode=True)
        assert h.shape[2:] == (1, 4, 4)
        h = (h.permute(0, 2, 3, 4, 1) if flatten_channels_last else h).flatten(1)
        h = F.relu(F.linear(h, t["fc6/W"], t["fc6/b"]))
        h = F.relu(F.linear(h, t["fc7/W"], t["fc7/b"]))
        return F.linear(h, t["fc8/W"], t["fc8/b"]).numpy()


def chainer_resize(frames: np.ndarray, size: int = 112) -> np.ndarray:
    """chainer.functions.resize_images (bilinear, align_corners=True) on (N, H, W, C), float64."""
    _, height, width, _ = frames.shape
    v, u = np.linspace(0, height - 1, size), np.linspace(0, width - 1, size)
    v0, u0 = np.clip(np.floor(v).astype(int), 0, height - 2), np.clip(np.floor(u).astype(int), 0, width - 2)
    wv1, wu1 = (v - v0)[:, None, None], (u - u0)[None, :, None]
    corner = lambda dv, du: frames[:, (v0 + dv)[:, None], (u0 + du)[None, :]]  # noqa: E731
    return ((1 - wv1) * (1 - wu1) * corner(0, 0) + (1 - wv1) * wu1 * corner(0, 1)
            + wv1 * (1 - wu1) * corner(1, 0) + wv1 * wu1 * corner(1, 1))


def numpy_preprocess(videos: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """tgan2's C3DVersion1UCF101 input stages literally: x = 2v - 1 in [-1, 1]; `pre` (RGB->BGR, x128);
    per-frame resize to 112x112; + (128 - mean[:, :, 8:120, 8:120])."""
    b, t, h, w, _ = videos.shape
    x = 2 * videos.astype(np.float64) - 1
    pre = 128 * x[..., [2, 1, 0]]
    resized = chainer_resize(pre.reshape(b * t, h, w, 3)).reshape(b, t, 112, 112, 3)
    bias = 128 - mean.astype(np.float64)[:, :, 8:120, 8:120].transpose(1, 2, 3, 0)
    return resized + bias


def relative_error(ours, reference) -> float:
    return float(np.max(np.abs(np.asarray(ours, np.float64) - reference)) / np.max(np.abs(reference)))


def write_npz(path, arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """(arrays, weights path, mean path, model, prepared mean) for the reduced-width network."""
    root = tmp_path_factory.mktemp("c3d")
    arrays = chainer_arrays(SMALL)
    weights = write_npz(root / "conv3d_deepnetA_ucf.npz", arrays)
    mean_path = write_npz(root / "mean2.npz", {"mean": raw_mean()})
    model, mean = c3d.load_c3d(weights, mean_path, SMALL)
    return arrays, weights, mean_path, model, mean


def test_logits_match_torch_chainer_semantics(small):
    arrays, _, _, model, mean = small
    videos = np.random.default_rng(2).uniform(0, 1, (2, 16, 64, 80, 3)).astype(np.float32)
    x = jax.jit(c3d.preprocess_for_c3d)(videos, mean)
    logits = nnx.jit(lambda m, clips: m(clips))(model, x)
    assert logits.shape == (2, 101) and logits.dtype == np.float32
    reference = torch_c3d(arrays, np.asarray(x))
    error = relative_error(logits, reference)
    print(f"small C3D max relative error vs torch float64: {error:.2e}")
    assert error < 1e-4
    # the test tells the flattening orders apart: fc6 on a channels-last flattening is far off
    assert relative_error(torch_c3d(arrays, np.asarray(x), flatten_channels_last=True), reference) > 1e-2


@pytest.mark.parametrize("shape", [(2, 16, 37, 50, 3), (1, 16, 128, 171, 3), (1, 16, 112, 112, 3)])
def test_preprocess_matches_numpy_restatement(small, shape):
    mean = raw_mean()
    videos = np.random.default_rng(3).uniform(0, 1, shape).astype(np.float32)
    ours = c3d.preprocess_for_c3d(videos, c3d.prepare_c3d_mean(mean))
    assert ours.shape == (shape[0], 16, 112, 112, 3) and ours.dtype == np.float32
    reference = numpy_preprocess(videos, mean)
    assert relative_error(ours, reference) < 1e-5


def test_preprocess_rejects_wrong_clips(small):
    mean = small[4]
    with pytest.raises(ValueError, match="exactly 16 frames, got 8"):
        c3d.preprocess_for_c3d(np.zeros((1, 8, 64, 64, 3), np.float32), mean)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        c3d.preprocess_for_c3d(np.zeros((16, 64, 64, 3), np.float32), mean)
    with pytest.raises(ValueError, match="floating point in \\[0, 1\\], got dtype uint8"):
        c3d.preprocess_for_c3d(np.zeros((1, 16, 64, 64, 3), np.uint8), mean)
    with pytest.raises(ValueError, match="prepared \\(16, 112, 112, 3\\) BGR mean"):
        c3d.preprocess_for_c3d(np.zeros((1, 16, 64, 64, 3), np.float32), raw_mean())


def test_model_rejects_unpreprocessed_input(small):
    with pytest.raises(ValueError, match="run preprocess_for_c3d"):
        small[3](np.zeros((1, 16, 64, 64, 3), np.float32))


def test_loader_names_missing_misshaped_and_unexpected(small, tmp_path):
    arrays = dict(small[0])
    del arrays["fc7/b"]
    arrays["conv2a/W"] = arrays["conv2a/W"][:, :, :, :, :2]
    arrays["pre/W"] = np.zeros((3, 3, 1, 1, 1), np.float32)
    weights = write_npz(tmp_path / "broken.npz", arrays)
    with pytest.raises(WeightsMismatch) as err:
        c3d.load_c3d(weights, small[2], SMALL)
    message = str(err.value)
    assert "missing 1: fc7/b" in message
    assert "conv2a/W (8, 4, 3, 3, 2) (expected (8, 4, 3, 3, 3))" in message
    assert "unexpected 1: pre/W" in message and "broken.npz" in message


def test_loader_file_errors(small, tmp_path):
    _, weights, mean_path, _, _ = small
    with pytest.raises(FileNotFoundError, match="C3D weights .*absent.npz"):
        c3d.load_c3d(tmp_path / "absent.npz", mean_path, SMALL)
    with pytest.raises(FileNotFoundError, match="C3D mean .*nomean.npz"):
        c3d.load_c3d(weights, tmp_path / "nomean.npz", SMALL)
    wrong_key = write_npz(tmp_path / "wrong_key.npz", {"average": raw_mean()})
    with pytest.raises(ValueError, match=r"no array 'mean' \(it holds \['average'\]\)"):
        c3d.load_c3d(weights, wrong_key, SMALL)
    batched = write_npz(tmp_path / "batched.npz", {"mean": raw_mean()[None]})
    with pytest.raises(ValueError, match=r"shape \(3, 16, 128, 171\).*got \(1, 3, 16, 128, 171\)"):
        c3d.load_c3d(weights, batched, SMALL)
    pickled = write_npz(tmp_path / "pickled.npz", {"mean": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ValueError, match="not a numpy .npz archive of plain arrays"):
        c3d.load_c3d(weights, pickled, SMALL)
    single = tmp_path / "single.npy"
    np.save(single, raw_mean())
    with pytest.raises(ValueError, match="single .npy array"):
        c3d.load_c3d(weights, single, SMALL)


def test_published_shapes_load_and_match_torch(tmp_path):
    """The default config reads a file of the published shapes (fc6 8192 -> 4096) and still
    matches torch (float32 here: a float64 reference at full width costs too much CPU)."""
    start = time.perf_counter()
    arrays = chainer_arrays(c3d.C3DConfig())
    assert arrays["fc6/W"].shape == (4096, 8192)
    weights = write_npz(tmp_path / "conv3d_deepnetA_ucf.npz", arrays)
    mean_path = write_npz(tmp_path / "mean2.npz", {"mean": raw_mean()})
    model, mean = c3d.load_c3d(weights, mean_path)
    videos = np.random.default_rng(4).uniform(0, 1, (1, 16, 128, 171, 3)).astype(np.float32)
    x = c3d.preprocess_for_c3d(videos, mean)
    logits = nnx.jit(lambda m, clips: m(clips))(model, x)
    error = relative_error(logits, torch_c3d(arrays, np.asarray(x), dtype=torch.float32).astype(np.float64))
    print(f"published-shape C3D max relative error vs torch float32: {error:.2e} "
          f"({time.perf_counter() - start:.1f} s)")
    assert error < 1e-4


def test_widths_come_from_the_file_and_other_dimensions_are_still_checked(tmp_path):
    """load_c3d without a config builds the widths the file holds; a tensor whose input size or
    kernel does not follow from them is still named."""
    arrays = chainer_arrays(SMALL)
    weights, mean_path = tmp_path / "small.npz", tmp_path / "mean2.npz"
    np.savez(weights, **arrays)
    np.savez(mean_path, mean=np.zeros(c3d.MEAN_SHAPE, np.float32))
    model, _ = c3d.load_c3d(weights, mean_path)
    assert model.conv1a.kernel[...].shape == (3, 3, 3, 3, 4) and model.fc8.kernel[...].shape == (32, 101)
    arrays["conv2a/W"] = arrays["conv2a/W"][:, :3]  # conv2a reads 3 channels, conv1a writes 4
    np.savez(weights, **arrays)
    with pytest.raises(ValueError, match=r"conv2a/W \(8, 3, 3, 3, 3\) \(expected \(8, 4, 3, 3, 3\)\)"):
        c3d.load_c3d(weights, mean_path)
