"""data_pipelines.encode_captions end to end: JSONL shards -> bfloat16 embedding shards."""
import json

import ml_dtypes
import numpy as np
import pytest

from data_pipelines import encode_captions
from lumiere_jax.text.embedding_store import read_embedding_shard
from test_t5_checkpoints import save_tiny_hf_encoder, torch_hidden
from test_text_tokenizer import CORPUS, train_tiny_sentencepiece


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    model = save_tiny_hf_encoder(str(root / "encoder.safetensors"))
    spm = train_tiny_sentencepiece(root / "spm.model")
    lines_a = [json.dumps({"id": f"a{i}", "caption": c}) for i, c in enumerate(CORPUS[:7])]
    lines_a.insert(3, "{not json")
    lines_a.insert(5, json.dumps({"id": "no-caption"}))
    lines_a.append(json.dumps({"id": 99, "caption": " ".join(CORPUS)}))  # truncated at max_length
    (root / "captions").mkdir()
    (root / "captions" / "shard_a.jsonl").write_text("\n".join(lines_a) + "\n")
    (root / "captions" / "shard_b.jsonl").write_text(json.dumps({"id": "b0", "caption": "a fox"}) + "\n")
    argv = [
        "--input", str(root / "captions" / "*.jsonl"), "--output_dir", str(root / "out"),
        "--checkpoint", str(root / "encoder.safetensors"), "--vocabulary", spm, "--encoder", "tiny",
        "--max_length", "64", "--dtype", "float32", "--batch_size", "4", "--mesh", "data=2,fsdp=2,tensor=2",
    ]
    (root / "out").mkdir()
    return root, model, argv, encode_captions.main(argv)


def test_shards_hold_the_reference_embeddings(job):
    root, model, _, summary = job
    a = read_embedding_shard(str(root / "out" / "shard_a.t5"))
    assert a.ids == [f"a{i}" for i in range(7)] + [99]
    assert a.embeddings.dtype == ml_dtypes.bfloat16 and a.embeddings.shape == (8, 64, 32)
    np.testing.assert_array_equal(a.mask, a.tokens != 0)
    assert a.mask[-1].all() and a.tokens[-1, -1] == 1  # the long caption: cut, still ends with EOS
    reference = torch_hidden(model, a.tokens, a.mask)
    # float32 encoder (sharded over 8 devices), rounded once to bfloat16 on the way to disk.
    np.testing.assert_allclose(np.asarray(a.embeddings, np.float32), reference, rtol=2**-8, atol=1e-5)
    b = read_embedding_shard(str(root / "out" / "shard_b.t5"))
    assert b.ids == ["b0"] and b.meta["source"].endswith("shard_b.jsonl")


def test_summary_counts_everything(job):
    root, _, _, summary = job
    assert summary["shards_encoded"] == 2 and summary["captions_encoded"] == 9
    assert summary["rows_skipped"] == {"not_json": 1, "no_caption": 1}
    assert summary["captions_truncated"] == 1  # only the caption made of the whole corpus
    assert summary["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert json.loads((root / "out" / "encode_captions_summary.json").read_text()) == summary


def test_rerun_skips_complete_shards(job):
    root, _, argv, _ = job
    summary = encode_captions.main(argv)
    assert summary["shards_already_done"] == 2 and summary["captions_encoded"] == 0


def test_help_and_bad_arguments(job, capsys):
    with pytest.raises(SystemExit) as exit_info:
        encode_captions.main(["--help"])
    assert exit_info.value.code == 0 and "--checkpoint_format" in capsys.readouterr().out
    _, _, argv, _ = job
    with pytest.raises(ValueError, match=r"--batch_size 6 must be a positive multiple of 4"):
        encode_captions.main(argv + ["--batch_size", "6"])
    with pytest.raises(FileNotFoundError, match="matches no file"):
        encode_captions.main(argv + ["--input", "/nonexistent/*.jsonl"])
