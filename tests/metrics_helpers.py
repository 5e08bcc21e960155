"""Small random metric networks in their published file layouts, shared by the network tests and
the eval-job tests: Hugging Face CLIP checkpoints (model.safetensors + tokenizer.json) and C3D in
TGAN's npz layout."""
import os

import numpy as np
import torch
import transformers
from safetensors.torch import save_file
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lumiere_jax.evaluation import c3d

IMAGE_SIZE = 32
MAX_LENGTH = 16
VOCAB_SIZE = 600  # > the tokenizer's 524 ids, so random ids can exceed the EOS id
MERGES = [("a", "t</w>"), ("c", "at</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>"),
          ("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>")]



def hf_tokenizer() -> transformers.CLIPTokenizer:
    """CLIP's byte-level BPE layout in small: 256 byte symbols, the same with '</w>', a few
    merges, then <|startoftext|> and <|endoftext|> (the last id, as in OpenAI's vocabulary)."""
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols + [s + "</w>" for s in symbols])}
    for merge in MERGES:
        vocab["".join(merge)] = len(vocab)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=MERGES)


def hf_model(eos_token_id: int, hidden_act: str, seed: int) -> transformers.CLIPModel:
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH, hidden_act=hidden_act,
                eos_token_id=eos_token_id, bos_token_id=eos_token_id - 1, pad_token_id=eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=8, hidden_act=hidden_act)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model


def write_checkpoint(directory, model, tokenizer, with_position_ids=False):
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if with_position_ids:  # what checkpoints converted from old pytorch_model.bin files hold
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        state["text_model.embeddings.position_ids"] = torch.arange(MAX_LENGTH)[None]
        state["vision_model.embeddings.position_ids"] = torch.arange((IMAGE_SIZE // 8) ** 2 + 1)[None]
        save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    return directory


SMALL_C3D = c3d.C3DConfig(conv_channels=(4, 8, 8, 8, 16, 16, 16, 16), fc_features=32, num_classes=101)
CONVS = ("conv1a", "conv2a", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b")


def chainer_arrays(config: c3d.C3DConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights in TGAN's npz naming and chainer layout, He-scaled so activations stay O(input)."""
    rng = np.random.default_rng(seed)
    arrays, channels_in = {}, 3
    for name, channels in zip(CONVS, config.conv_channels):
        scale = np.sqrt(2 / (27 * channels_in))
        arrays[f"{name}/W"] = rng.standard_normal((channels, channels_in, 3, 3, 3), np.float32) * scale
        arrays[f"{name}/b"] = rng.standard_normal(channels, np.float32) * 0.1
        channels_in = channels
    widths = (channels_in * 16, config.fc_features, config.fc_features, config.num_classes)  # pool5: 1x4x4
    for name, features_in, features_out in zip(("fc6", "fc7", "fc8"), widths[:-1], widths[1:]):
        arrays[f"{name}/W"] = rng.standard_normal((features_out, features_in), np.float32) * np.sqrt(2 / features_in)
        arrays[f"{name}/b"] = rng.standard_normal(features_out, np.float32) * 0.1
    return arrays


def raw_mean(seed: int = 1) -> np.ndarray:
    """A stand-in for mean2.npz['mean']: (C, T, H, W) BGR values around the Caffe mean."""
    return (100 + 10 * np.random.default_rng(seed).standard_normal((3, 16, 128, 171))).astype(np.float32)
