"""Checkpoint readers against the reference: HF parity, t5x layouts, sharded loading, bad input.

The reference is `transformers` (torch, CPU): tiny random T5EncoderModel / UMT5EncoderModel built
offline and saved with `safetensors.torch.save_model`. t5x checkpoints are written here from the
same tensors, following the published t5x layouts (not our reader's code).
"""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import tensorstore as ts
from flax import nnx, serialization

from lumiere_jax.models.t5 import t5_config
from lumiere_jax.parallel import logical_axis_rules, make_mesh, state_shardings
from lumiere_jax.text.checkpoint import CheckpointError, load_encoder, path_name
from lumiere_jax.text.hf_checkpoint import hf_sources, load_hf_encoder, read_safetensors
from lumiere_jax.text.t5x_checkpoint import load_t5x_encoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

LENGTHS = (150, 5, 97)  # > max_distance (128): every bucket kind, and padding in two rows


def hf_model(variant: str, seed: int = 0, seq2seq: bool = False):
    """A tiny random HF encoder (or full T5 model) with the shape of our 'tiny' preset."""
    cfg = t5_config("tiny", variant)
    kwargs = dict(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.head_dim, d_ff=cfg.d_ff,
        num_layers=cfg.num_layers, num_heads=cfg.num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    if seq2seq:
        return transformers.T5ForConditionalGeneration(transformers.T5Config(**kwargs)).eval()
    if variant == "umt5":
        return transformers.UMT5EncoderModel(transformers.UMT5Config(**kwargs)).eval()
    return transformers.T5EncoderModel(transformers.T5Config(**kwargs)).eval()


def save_tiny_hf_encoder(path: str, variant: str = "t5_1_1", seed: int = 0):
    """Saves a tiny random HF encoder to `path` (.safetensors) and returns the torch model."""
    model = hf_model(variant, seed)
    safetensors_torch.save_model(model, path)
    return model


def padded_batch(vocab_size: int):
    rng = np.random.default_rng(0)
    length = max(LENGTHS)
    mask = np.arange(length)[None] < np.asarray(LENGTHS)[:, None]
    return rng.integers(1, vocab_size, (len(LENGTHS), length)) * mask, mask


def torch_hidden(model, tokens, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64)))
    return out.last_hidden_state.numpy()


def params_of(module) -> dict:
    return {path_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(module))}


@pytest.fixture(scope="module", params=["t5_1_1", "umt5"])
def hf_checkpoint(request, tmp_path_factory):
    variant = request.param
    path = str(tmp_path_factory.mktemp(variant) / "encoder.safetensors")
    return variant, path, save_tiny_hf_encoder(path, variant)


def test_hf_parity_on_padded_batch(hf_checkpoint):
    variant, path, model = hf_checkpoint
    cfg = t5_config("tiny", variant)
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(load_hf_encoder(path, cfg)(tokens, mask))
    np.testing.assert_allclose(ours, torch_hidden(model, tokens, mask), atol=1e-4, rtol=0)


def test_seq2seq_checkpoint_directory_keeps_the_encoder(tmp_path):
    """A full T5 model saved by save_pretrained in several shards (index JSON): decoder skipped,
    the tied embedding found under whichever name was kept."""
    model = hf_model("t5_1_1", seed=1, seq2seq=True)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    cfg = t5_config("tiny")
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(load_hf_encoder(str(tmp_path), cfg)(tokens, mask))
    np.testing.assert_allclose(ours, torch_hidden(model.encoder, tokens, mask), atol=1e-4, rtol=0)


def hf_arrays(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def t5x_params(hf: dict, variant: str, layout: str) -> dict[str, np.ndarray]:
    """t5x parameter names/layouts (DESIGN.md section 2) from HF tensors."""
    cfg = t5_config("tiny", variant)
    h, dk, n = cfg.num_heads, cfg.head_dim, cfg.num_layers
    layers = []
    for i in range(n):
        b = f"encoder.block.{i}.layer."
        layer = {
            "pre_attention_layer_norm/scale": hf[b + "0.layer_norm.weight"],
            "pre_mlp_layer_norm/scale": hf[b + "1.layer_norm.weight"],
            "mlp/wi_0/kernel": hf[b + "1.DenseReluDense.wi_0.weight"].T,
            "mlp/wi_1/kernel": hf[b + "1.DenseReluDense.wi_1.weight"].T,
            "mlp/wo/kernel": hf[b + "1.DenseReluDense.wo.weight"].T,
        }
        for theirs, name in (("q", "query"), ("k", "key"), ("v", "value")):
            kernel = hf[f"{b}0.SelfAttention.{theirs}.weight"].T  # [d, h*dk]
            layer[f"attention/{name}/kernel"] = kernel if layout == "examples" else kernel.reshape(-1, h, dk)
        out = hf[b + "0.SelfAttention.o.weight"].T  # [h*dk, d]
        layer["attention/out/kernel"] = out if layout == "examples" else out.reshape(h, dk, -1)
        if variant == "umt5":
            layer["relpos_bias/rel_embedding"] = hf[b + "0.SelfAttention.relative_attention_bias.weight"].T
        layers.append(layer)
    params = {
        "token_embedder/embedding": hf["shared.weight"],
        "encoder/encoder_norm/scale": hf["encoder.final_layer_norm.weight"],
        "decoder/decoder_norm/scale": np.ones(cfg.d_model, np.float32),  # a seq2seq checkpoint's decoder
    }
    if variant == "t5_1_1":
        params["encoder/relpos_bias/rel_embedding"] = hf[
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T
    for key in layers[0]:
        if layout == "examples":
            params.update({f"encoder/layers_{i}/{key}": layer[key] for i, layer in enumerate(layers)})
        else:
            params[f"encoder/encoder/{key}"] = np.stack([layer[key] for layer in layers], axis=1)
    return params


def write_t5x(directory, params: dict[str, np.ndarray], path_of=None) -> None:
    """A t5x checkpoint directory: zarr arrays + msgpack `checkpoint` of tensorstore specs.

    One leaf is inlined in the msgpack and one uses a GCS spec with a placeholder bucket, as
    t5x checkpoints do; `path_of(name, dotted)` overrides the recorded spec path.
    """
    os.makedirs(directory, exist_ok=True)
    target: dict = {}
    for i, (name, array) in enumerate(sorted(params.items())):
        dotted = "target." + name.replace("/", ".")
        ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": os.path.join(directory, dotted)}},
                create=True, dtype=ts.float32, shape=array.shape).result().write(array).result()
        kvstore = {"driver": "gcs", "bucket": "t5x-dummy-bucket"} if i == 1 else {"driver": "file"}
        kvstore["path"] = path_of(name, dotted) if path_of else dotted
        spec = {"driver": "zarr", "kvstore": kvstore, "metadata": {"shape": list(array.shape)}}
        node = target
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = array if name == "encoder/encoder_norm/scale" else spec
    state = {"optimizer": {"target": target, "state": {"step": np.asarray(1000)}}}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(state))


@pytest.mark.parametrize("layout", ["examples", "scanned"])
def test_t5x_layouts_load_the_hf_parameters(hf_checkpoint, layout, tmp_path):
    variant, path, model = hf_checkpoint
    cfg = t5_config("tiny", variant)
    write_t5x(tmp_path, t5x_params(hf_arrays(model), variant, layout))
    from_t5x, from_hf = params_of(load_t5x_encoder(str(tmp_path), cfg)), params_of(load_hf_encoder(path, cfg))
    assert from_t5x.keys() == from_hf.keys()
    for name in from_hf:
        np.testing.assert_array_equal(from_t5x[name], from_hf[name], err_msg=name)


def test_loading_into_the_mesh_sharding(tmp_path):
    """Each device reads its own slices (memory map, tensorstore) into the sharding the logical
    axis names give on a (data=2, fsdp=2, tensor=2) mesh; values equal the unsharded load."""
    model = hf_model("umt5", seed=2)
    hf_path = str(tmp_path / "umt5.safetensors")
    safetensors_torch.save_model(model, hf_path)
    write_t5x(tmp_path / "t5x", t5x_params(hf_arrays(model), "umt5", "scanned"))
    cfg, rules = t5_config("tiny", "umt5"), logical_axis_rules(None)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    reference = params_of(load_hf_encoder(hf_path, cfg))
    loaded = (load_hf_encoder(hf_path, cfg, mesh, rules), load_t5x_encoder(str(tmp_path / "t5x"), cfg, mesh, rules))
    for module in loaded:
        state = nnx.state(module)
        expected = dict(nnx.to_flat_state(state_shardings(state, mesh, rules)))
        for path, variable in nnx.to_flat_state(state):
            array = variable.get_value()
            assert array.sharding == expected[path].get_value(), path_name(path)
            np.testing.assert_array_equal(np.asarray(array), reference[path_name(path)])
        spec = module.layers[0].attention.query.get_value().sharding.spec
        assert tuple(spec) == ("fsdp", "tensor", None)  # embed over fsdp, heads over tensor


def test_bf16_params_load_as_bf16(hf_checkpoint):
    variant, path, model = hf_checkpoint
    cfg = t5_config("tiny", variant, dtype="bfloat16", param_dtype="bfloat16")
    encoder = load_hf_encoder(path, cfg)
    assert encoder.embedding.get_value().dtype == jax.numpy.bfloat16
    tokens, mask = padded_batch(cfg.vocab_size)
    ours = np.asarray(encoder(tokens, mask), np.float32)
    ref = torch_hidden(model, tokens, mask)
    # bfloat16 keeps 8 significant bits; two layers of rounding stay within a few percent.
    assert np.abs(ours - ref)[mask].max() < 0.05 * np.abs(ref[mask]).max()


# ---- bad input -------------------------------------------------------------------------------


def save_numpy(path, tensors):
    safetensors_numpy.save_file(tensors, str(path))
    return str(path)


def test_missing_unexpected_and_misshapen_tensors(hf_checkpoint, tmp_path):
    variant, path, model = hf_checkpoint
    cfg = t5_config("tiny", variant)
    tensors = {k: v for k, v in hf_arrays(model).items() if k != "encoder.embed_tokens.weight"}
    wo = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    missing = save_numpy(tmp_path / "missing.safetensors", {k: v for k, v in tensors.items() if k != wo})
    with pytest.raises(CheckpointError, match=rf"lacks tensor '{wo}' for parameter layers\.1\.mlp\.wo"):
        load_hf_encoder(missing, cfg)
    extra = dict(tensors, **{"encoder.block.0.adapter.weight": np.ones(3, np.float32)})
    extra = save_numpy(tmp_path / "extra.safetensors", extra)
    with pytest.raises(CheckpointError, match=r"does not use: \['encoder\.block\.0\.adapter\.weight'\]"):
        load_hf_encoder(extra, cfg)
    wrong_shape = r"parameter layers\.0\.mlp\.wi_0: .*wi_0\.weight' gives shape \(32, 64\) but the encoder expects \(32, 48"
    with pytest.raises(CheckpointError, match=wrong_shape):
        load_hf_encoder(path, dataclasses.replace(cfg, d_ff=48))
    cannot_split = r"parameter layers\.0\.attention\.query: .*q\.weight.* has shape \(32, 32\)"
    with pytest.raises(CheckpointError, match=cannot_split):
        load_hf_encoder(path, dataclasses.replace(cfg, num_heads=3))


def test_umt5_checkpoint_loaded_as_t5_names_the_extra_tables(tmp_path):
    path = str(tmp_path / "umt5.safetensors")
    save_tiny_hf_encoder(path, "umt5")
    with pytest.raises(CheckpointError, match=r"block\.1\.layer\.0\.SelfAttention\.relative_attention_bias.*umt5"):
        load_hf_encoder(path, t5_config("tiny", "t5_1_1"))


def test_truncated_or_corrupt_safetensors(hf_checkpoint, tmp_path):
    _, path, _ = hf_checkpoint
    data = open(path, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: tensor .* needs bytes .* truncated or corrupt"):
        load_hf_encoder(str(cut), t5_config("tiny", hf_checkpoint[0]))
    stub = tmp_path / "stub.safetensors"
    stub.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="too short for a safetensors header"):
        load_hf_encoder(str(stub), t5_config("tiny"))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_hf_encoder(str(tmp_path / "nowhere.safetensors"), t5_config("tiny"))


@pytest.mark.parametrize("escape", ["../outside", "/ABS/outside", ""])
def test_tensorstore_paths_outside_the_checkpoint_are_refused(hf_checkpoint, tmp_path, escape):
    variant, _, model = hf_checkpoint
    outside = tmp_path / "outside"
    params = t5x_params(hf_arrays(model), variant, "examples")
    name = "encoder/layers_0/mlp/wo/kernel"
    # The array really exists at the escaping location: only the path check can stop the read.
    ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(outside)}}, create=True,
            dtype=ts.float32, shape=params[name].shape).result().write(params[name]).result()
    recorded = escape.replace("/ABS", str(tmp_path))
    write_t5x(tmp_path / "ckpt", params, path_of=lambda n, dotted: recorded if n == name else dotted)
    with pytest.raises(CheckpointError, match=r"encoder/layers_0/mlp/wo/kernel.*outside the checkpoint directory"):
        load_t5x_encoder(str(tmp_path / "ckpt"), t5_config("tiny", variant))


def test_t5x_missing_files(tmp_path, hf_checkpoint):
    variant, _, model = hf_checkpoint
    with pytest.raises(CheckpointError, match="has no t5x 'checkpoint' file"):
        load_t5x_encoder(str(tmp_path), t5_config("tiny", variant))
    params = t5x_params(hf_arrays(model), variant, "scanned")
    write_t5x(tmp_path / "ckpt", params)
    (tmp_path / "ckpt" / "target.token_embedder.embedding" / ".zarray").unlink()
    with pytest.raises(CheckpointError, match="token_embedder/embedding"):
        load_t5x_encoder(str(tmp_path / "ckpt"), t5_config("tiny", variant))
    with pytest.raises(CheckpointError, match=r"scanned tensor .* expected 3 layers on axis 1"):
        load_t5x_encoder(str(tmp_path / "ckpt"), dataclasses.replace(t5_config("tiny", variant), num_layers=3))


def test_index_json_shard_outside_directory_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    index = {"weight_map": {"x": "../evil.safetensors"}}
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        load_hf_encoder(str(tmp_path / "ckpt"), t5_config("tiny"))


def test_load_encoder_checks_the_parameter_map(hf_checkpoint):
    """A reader's map must name exactly the encoder's parameters."""
    variant, path, _ = hf_checkpoint
    cfg = t5_config("tiny", variant)
    sources = hf_sources(read_safetensors(path), cfg, path)
    with pytest.raises(CheckpointError, match=r"lacks 1 parameter\(s\) of the encoder: \['final_norm\.scale'\]"):
        load_encoder(cfg, {k: v for k, v in sources.items() if k != "final_norm.scale"})
    with pytest.raises(CheckpointError, match=r"does not have: \['layers\.9\.mlp\.wo'\]"):
        load_encoder(cfg, dict(sources, **{"layers.9.mlp.wo": sources["layers.0.mlp.wo"]}))
