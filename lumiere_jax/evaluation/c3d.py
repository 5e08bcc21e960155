"""C3D fine-tuned on UCF101: the classifier behind the video Inception Score on UCF101.

TGAN, TGANv2, StyleGAN-V and the text-to-video papers that report IS on UCF101 (Lumiere
37.54, Make-A-Video 33.00) score 16-frame clips with the C3D "deepnetA" network fine-tuned on
UCF101, converted from Caffe to chainer by TGAN (`conv3d_deepnetA_ucf.npz`) with the Caffe
training mean (`mean2.npz`). This module is that network in Flax NNX, channels-last, float32 (all
contractions at `Precision.HIGHEST`, so a TPU's bf16 passes or a GPU's TF32 do not move the score),
the protocol's preprocessing as a pure jnp function, and a loader for the two published files.

The reference followed is tgan2's `C3DVersion1UCF101` (pfnet-research/tgan2,
tgan2/models/c3d/c3d_ucf101.py), which StyleGAN-V converted to TorchScript and cites as the one
it reproduces. Its forward pass on a clip x in [-1, 1], (N, C=3, T=16, H, W) RGB:

1. `pre`: a 1x1x1 convolution with W[0, 2] = W[1, 1] = W[2, 0] = 128: RGB -> BGR, times 128;
2. `_resize`: `F.resize_images(x, (112, 112))` per frame, on the whole frame (no crop first):
   chainer's bilinear with `align_corners=True` (its default: the source grid is
   `linspace(0, size - 1, 112)`, corners mapped to corners, not OpenCV's half-pixel centres);
3. `mean`: a learned-bias link holding `128 - mean[:, :, 8:120, 8:120]`, so the network sees
   128·x + 128 - mean, i.e. BGR pixel values in [0, 256] minus the Caffe mean (the +128 is
   easy to miss when the protocol is summarised as "x128").
4. conv1a 64, pool1 (1,2,2); conv2a 128, pool2; conv3a/b 256, pool3; conv4a/b 512, pool4;
   conv5a/b 512, pool5; fc6 4096, fc7 4096, fc8 101. Every convolution is 3x3x3, stride 1,
   pad 1, then ReLU; fc6 and fc7 are followed by ReLU (dropout is off at inference). Pools
   other than pool1 are 2x2x2, stride 2, and every pool is chainer's `max_pooling_nd` with its
   default `cover_all=True`: the output has ceil((n - k) / s) + 1 positions, the last window
   overhanging the edge. Only pool5 feels it (7x7 -> 4x4), which is why fc6 has 512·1·4·4 = 8192
   inputs.

With our clips v in [0, 1] (the lead's convention), x = 2v - 1 and 128·x + 128 = 256·v exactly,
so `preprocess_for_c3d` computes resize(v_bgr)·256 - mean: the same map (resizing is linear and
its weights sum to 1, so scaling and the +128 commute with it). Other code differs: MAGVIT's JAX
port scales by 255, and TGAN v1's `infer_score.py` resizes with OpenCV cubic to 128x128 and
crops the mean at columns 29:141; neither is followed here.

`mean2.npz` is expected to hold one array under the key 'mean' of shape (3, 16, 128, 171):
(C, T, H, W), BGR, the Caffe mean of 16-frame clips resized to 128x171 (an inference: the file
could not be inspected here, and both references read `['mean']`). That shape is what the reference's indexing
`mean[:, :, 8:120, 8:120]` into a (3, 16, 112, 112) bias requires (a leading batch axis would not
broadcast there); TGAN v1 reshapes the same array to (3, 1, 16, 128, 171). It is not resized,
only cropped, at rows 8:120 and columns 8:120 (not the centre columns 29:141) as the reference
does. Any other shape is refused.

Name map: chainer's `save_npz` writes each registered link's parameters as 'link/param'; the
reference registers exactly these eleven links (`pre` and `mean` are set outside `init_scope`,
so they are not in the file):

    npz key        chainer layout             ours               our layout         conversion
    convXY/W       (out, in, kt, kh, kw)      convXY/kernel      (kt, kh, kw, in, out)  W.transpose(2, 3, 4, 1, 0)
    convXY/b       (out,)                     convXY/bias        (out,)             as is
    fcN/W          (out, in)                  fcN/kernel         (in, out)          W.T
    fcN/b          (out,)                     fcN/bias           (out,)             as is

for convXY in conv1a, conv2a, conv3a, conv3b, conv4a, conv4b, conv5a, conv5b and fcN in fc6,
fc7, fc8. fc6's W needs no reordering: chainer's Linear flattens pool5's (C, T, H, W) in NCTHW
order, so our channels-last pool5 output is transposed to (B, C, T, H, W) before flattening.
"""
from __future__ import annotations

import dataclasses
import pathlib
import zipfile
from typing import Optional

import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from lumiere_jax.evaluation.network_weights import assign_arrays, check_arrays, model_shapes
from lumiere_jax.models.rngs import Rngs

FRAMES = 16  # the clip length C3D was trained on; fc6's input size depends on it
SIZE = 112  # frames are resized to SIZE x SIZE
MEAN_SHAPE = (3, 16, 128, 171)  # mean2.npz['mean']: (C, T, H, W), BGR
MEAN_CROP = (slice(8, 8 + SIZE), slice(8, 8 + SIZE))  # rows, columns of the mean the reference uses
PIXEL_SCALE = 256.0  # 128·(2v - 1) + 128 for v in [0, 1]
HIGHEST = lax.Precision.HIGHEST

CONV_NAMES = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")
FC_NAMES = ("fc6", "fc7", "fc8")
# (convolutions, then the max-pool window (= stride) over (T, H, W) that follows them)
STAGES = ((("conv1a",), (1, 2, 2)), (("conv2a",), (2, 2, 2)), (("conv3a", "conv3b"), (2, 2, 2)),
          (("conv4a", "conv4b"), (2, 2, 2)), (("conv5a", "conv5b"), (2, 2, 2)))
CHAINER_PARAM = {"kernel": "W", "bias": "b"}


@dataclasses.dataclass(frozen=True)
class C3DConfig:
    """Layer widths: the defaults are the published network; tests shrink them to stay fast
    (the loader then expects a file of the same reduced shapes)."""
    conv_channels: tuple[int, ...] = (64, 128, 256, 256, 512, 512, 512, 512)  # in CONV_NAMES order
    fc_features: int = 4096
    num_classes: int = 101

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "C3DConfig":
        """The widths a TGAN-layout file holds (each layer's output size), so a file of the published
        network builds the published network and a small test file a small one; every other dimension
        (inputs, kernel sizes, fc6's 8192 = 512·1·4·4 inputs) is still checked against them when the
        file is loaded. A layer the file lacks keeps the published width, and the loader names it."""
        default = cls()

        def out(name: str, width: int) -> int:
            return int(arrays[name].shape[0]) if getattr(arrays.get(name), "ndim", 0) else width

        return cls(conv_channels=tuple(out(f"{n}/W", w) for n, w in zip(CONV_NAMES, default.conv_channels)),
                   fc_features=out("fc6/W", default.fc_features), num_classes=out("fc8/W", default.num_classes))


def _cover_all_size(n: int, k: int) -> int:
    """Outputs of chainer's cover_all pooling (window = stride = k): ceil((n - k) / k) + 1."""
    return -(-(n - k) // k) + 1


def _cover_all_pool(x: jnp.ndarray, window: tuple[int, int, int]) -> jnp.ndarray:
    """Chainer's max_pooling_nd(ksize=window, cover_all=True) on (B, T, H, W, C): the input is
    padded at the end with -inf so that the last, partial window still counts (stride = window,
    no padding at the start)."""
    pad = [(0, 0), *((0, _cover_all_size(n, k) * k - n) for n, k in zip(x.shape[1:4], window)), (0, 0)]
    dims = (1, *window, 1)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, dims, pad)


def _pooled_size() -> tuple[int, ...]:
    """(T, H, W) after the five pools of a (FRAMES, SIZE, SIZE) clip: (1, 4, 4)."""
    size = (FRAMES, SIZE, SIZE)
    for _, window in STAGES:
        size = tuple(_cover_all_size(n, k) for n, k in zip(size, window))
    return size


class C3D(nnx.Module):
    """C3D deepnetA: a preprocessed (B, 16, 112, 112, 3) clip -> (B, num_classes) UCF101 logits."""

    def __init__(self, config: C3DConfig = C3DConfig(), *, rngs: nnx.Rngs):
        if len(config.conv_channels) != len(CONV_NAMES):
            raise ValueError(f"conv_channels needs {len(CONV_NAMES)} widths ({', '.join(CONV_NAMES)}), "
                             f"got {config.conv_channels}")
        channels_in = 3
        for name, channels in zip(CONV_NAMES, config.conv_channels):
            setattr(self, name, nnx.Conv(channels_in, channels, (3, 3, 3), padding=((1, 1),) * 3,
                                         precision=HIGHEST, rngs=rngs))
            channels_in = channels
        flat = channels_in * int(np.prod(_pooled_size()))
        widths = (flat, config.fc_features, config.fc_features, config.num_classes)
        for name, features_in, features_out in zip(FC_NAMES, widths[:-1], widths[1:]):
            setattr(self, name, nnx.Linear(features_in, features_out, precision=HIGHEST, rngs=rngs))

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        expected = (FRAMES, SIZE, SIZE, 3)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"C3D takes preprocessed clips of shape (B, {', '.join(map(str, expected))}), got "
                             f"{tuple(x.shape)}: run preprocess_for_c3d on (B, 16, H, W, 3) videos first")
        h = x
        for names, window in STAGES:
            for name in names:
                h = nnx.relu(getattr(self, name)(h))
            h = _cover_all_pool(h, window)
        # chainer's Linear flattens pool5 in (C, T, H, W) order; fc6's W is stored for that order
        h = jnp.transpose(h, (0, 4, 1, 2, 3)).reshape(h.shape[0], -1)
        h = nnx.relu(self.fc6(h))
        h = nnx.relu(self.fc7(h))
        return self.fc8(h)


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of chainer's bilinear resize along one axis: sample points
    linspace(0, size_in - 1, size_out), each between its floor (clipped to size_in - 2) and the
    next pixel, weights computed in float64 and cast to float32 as chainer does."""
    points = np.linspace(0, size_in - 1, size_out)
    low = np.clip(np.floor(points).astype(np.int64), 0, size_in - 2)
    frac = points - low
    weights = np.zeros((size_out, size_in))
    rows = np.arange(size_out)
    np.add.at(weights, (rows, low), 1 - frac)
    np.add.at(weights, (rows, low + 1), frac)
    return weights.astype(np.float32)


def _check_videos(videos) -> None:
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"videos must be (B, T, H, W, 3) RGB, got shape {tuple(videos.shape)}")
    if videos.shape[1] != FRAMES:
        raise ValueError(f"C3D's Inception Score protocol scores clips of exactly {FRAMES} frames, got "
                         f"{videos.shape[1]} (shape {tuple(videos.shape)}): cut or sample 16-frame clips first")
    if min(videos.shape[2:4]) < 2:
        raise ValueError(f"frames must be at least 2x2 pixels for the bilinear resize, got {tuple(videos.shape)}")
    if not jnp.issubdtype(videos.dtype, jnp.floating):
        raise ValueError(f"videos must be floating point in [0, 1], got dtype {videos.dtype}: convert uint8 "
                         "frames with x / 255")


def preprocess_for_c3d(videos, mean) -> jnp.ndarray:
    """(B, 16, H, W, 3) RGB clips in [0, 1] -> C3D's (B, 16, 112, 112, 3) input: BGR, each whole
    frame resized to 112x112 by chainer's align-corners bilinear, scaled to [0, 256], minus the
    cropped Caffe mean. `mean` is the (16, 112, 112, 3) array that `load_c3d` / `prepare_c3d_mean`
    return. Pure jnp on static shapes, so it runs inside a (sharded) jit; values outside [0, 1]
    are not checked (they cannot be under jit) and pass through linearly."""
    videos = jnp.asarray(videos)
    _check_videos(videos)
    if tuple(np.shape(mean)) != (FRAMES, SIZE, SIZE, 3):
        raise ValueError(f"mean must be the prepared (16, 112, 112, 3) BGR mean from load_c3d or prepare_c3d_mean, "
                         f"got shape {tuple(np.shape(mean))}")
    rows = jnp.asarray(_align_corners_matrix(videos.shape[2], SIZE))
    cols = jnp.asarray(_align_corners_matrix(videos.shape[3], SIZE))
    bgr = videos[..., ::-1].astype(jnp.float32)
    resized = jnp.einsum("oh,bthwc,pw->btopc", rows, bgr, cols, precision=HIGHEST)
    return resized * PIXEL_SCALE - jnp.asarray(mean, jnp.float32)


def prepare_c3d_mean(raw) -> np.ndarray:
    """mean2.npz's (3, 16, 128, 171) (C, T, H, W) BGR mean -> the (16, 112, 112, 3) channels-last
    crop [:, :, 8:120, 8:120] that the reference subtracts (cropped, never resized)."""
    raw = np.asarray(raw)
    if raw.shape != MEAN_SHAPE:
        raise ValueError(f"the C3D mean must have shape {MEAN_SHAPE} (C, T, H, W; TGAN's mean2.npz['mean']), got "
                         f"{raw.shape}: check that the file is TGAN's mean2.npz")
    rows, cols = MEAN_CROP
    return np.ascontiguousarray(raw[:, :, rows, cols].transpose(1, 2, 3, 0), dtype=np.float32)


def _read_npz(path, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz archive, read without unpickling anything."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}: nothing is downloaded at run time, so place the "
                                "file there (or pass its path)")
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single .npy array")
        with archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a numpy .npz archive of plain arrays, as {what} is ({err})") from err


def _chainer_key(name: str) -> str:
    """'conv1a/kernel' -> 'conv1a/W' (our name -> the npz key)."""
    link, param = name.split("/")
    return f"{link}/{CHAINER_PARAM[param]}"


def _chainer_shape(shape: tuple) -> tuple:
    """Our layout's shape -> the shape chainer stores (see the table in the module docstring)."""
    if len(shape) == 5:
        return tuple(shape[i] for i in (4, 3, 0, 1, 2))
    return tuple(reversed(shape))  # (in, out) -> (out, in); a bias is unchanged


def _from_chainer(array: np.ndarray) -> np.ndarray:
    """A chainer-layout tensor -> ours (the inverse of _chainer_shape)."""
    if array.ndim == 5:
        return array.transpose(2, 3, 4, 1, 0)
    return array.T


def fill_c3d(model: C3D, arrays: dict[str, np.ndarray], source: str) -> None:
    """Fills `model` in place from TGAN-layout arrays {'conv1a/W': ..., 'fc8/b': ...}. The file is
    checked in its own names and layout first, so an error names the tensors as the file has them."""
    ours = model_shapes(model, nnx.Param)
    check_arrays({_chainer_key(name): _chainer_shape(shape) for name, shape in ours.items()}, arrays, source)
    assign_arrays(model, {name: _from_chainer(arrays[_chainer_key(name)]) for name in ours}, source, kind=nnx.Param)


def load_c3d(weights_path, mean_path, config: Optional[C3DConfig] = None) -> tuple[C3D, np.ndarray]:
    """(C3D filled from TGAN's conv3d_deepnetA_ucf.npz, the prepared (16, 112, 112, 3) mean from
    mean2.npz) ready for `model(preprocess_for_c3d(videos, mean))`. The network is built abstractly
    (no random initialisation of its 78M parameters) and then filled from the file; `config` None
    takes the widths from the file (C3DConfig.from_arrays)."""
    arrays = _read_npz(weights_path, "the C3D weights (TGAN's conv3d_deepnetA_ucf.npz)")
    config = config or C3DConfig.from_arrays(arrays)
    stored = _read_npz(mean_path, "the C3D mean (TGAN's mean2.npz)")
    if "mean" not in stored:
        raise ValueError(f"{mean_path} has no array 'mean' (it holds {sorted(stored)}): expected TGAN's mean2.npz")
    mean = prepare_c3d_mean(stored["mean"])
    model = nnx.eval_shape(lambda: C3D(config, rngs=Rngs(0)))
    fill_c3d(model, arrays, source=str(weights_path))
    return model, mean
