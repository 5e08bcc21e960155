"""`--mode=compile_report`: the train step compiled for a TPU slice on this CPU machine (tpu-aot extra).

One real compile of the tiny STUNet for a 4-chip v5p slice checks the report against an
independent count: a train step of all parameters costs the model's forward FLOPs (XLA's own count
of the lowered forward pass, `model_report`) times 3 (forward, then backward through activations
and through weights), per clip, within 25% (norms, the loss, AdamW and the EMA add a little).
"""
import importlib.util
import math

import pytest

from lumiere_jax.train.compile_report import largest_fitting
from cli_helpers import libtpu_noise, run_main
from train_helpers import train_config

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="needs the tpu-aot extra (libtpu)")
BACKWARD_FACTOR = 3.0


@pytest.mark.parametrize("limit", [1, 2, 7, 64, 100])
def test_largest_fitting_finds_the_threshold_in_few_probes(limit):
    bound = 2 * math.ceil(math.log2(limit + 1)) + 2
    for threshold in range(limit + 1):
        for guess in {1, limit, threshold, threshold + 1, limit // 2, 10 * limit}:
            probes = []

            def fits(k):
                probes.append(k)
                return k <= threshold

            assert largest_fitting(fits, limit, guess) == threshold, (threshold, guess, probes)
            assert len(probes) == len(set(probes)) and all(1 <= k <= limit for k in probes)
            assert len(probes) <= bound, (threshold, guess, probes)


def test_a_good_guess_costs_two_probes():
    probes = []
    assert largest_fitting(lambda k: probes.append(k) or k <= 37, 1000, guess=37) == 37
    assert probes == [37, 38]


@needs_libtpu
def test_tpu_slices_and_their_hbm():
    from lumiere_jax.train.compile_report import tpu_slice

    v4 = tpu_slice("v4:2x2x1")  # libtpu shows each v4 TensorCore as a device: two per chip
    assert (len(v4.devices), v4.chips, v4.hbm_gib_per_device) == (8, 4, 16.0)
    v5p = tpu_slice("v5p:2x2x1")
    assert (len(v5p.devices), v5p.chips, v5p.hbm_gib_per_device, v5p.generation) == (4, 4, 95.0, "v5p")
    assert tpu_slice("v6e:2x2", hbm_gib=10.0).hbm_gib_per_device == 10.0
    two = tpu_slice("v5e:2x2", num_slices=2)
    assert (len(two.devices), two.chips, two.hbm_gib_per_device) == (8, 8, 16.0)
    assert {d.slice_index for d in two.devices} == {0, 1}
    with pytest.raises(ValueError, match="unknown TPU generation 'v9x'"):
        tpu_slice("v9x:2x2")
    with pytest.raises(ValueError, match="'v5p-16' must be GENERATION:AxB"):
        tpu_slice("v5p-16")
    with pytest.raises(ValueError, match="'v5e:3x7' is not a TPU topology libtpu knows"):
        tpu_slice("v5e:3x7")


@needs_libtpu
def test_a_program_larger_than_hbm_is_reported_not_raised():
    import jax
    import jax.numpy as jnp
    from jax.sharding import SingleDeviceSharding

    from lumiere_jax.train.compile_report import tpu_slice, try_compile

    device = tpu_slice("v5e:1x1").devices[0]  # 16 GiB of HBM

    def compile_for(n):
        x = jax.ShapeDtypeStruct((n,), jnp.float32, sharding=SingleDeviceSharding(device))
        return lambda: jax.jit(lambda a: jnp.sin(a) + jnp.cos(a)[::-1]).lower(x).compile()

    compiled, error = try_compile(compile_for(2**20))
    assert error is None and compiled.memory_analysis().argument_size_in_bytes == 4 * 2**20
    compiled, error = try_compile(compile_for(2**31))  # 8 GiB in, 8 GiB out, temporaries on top
    assert compiled is None and "RESOURCE_EXHAUSTED" in error and "HBM" in error


def tiny_config(overrides=None):
    """The trainer tests' two-level tiny STUNet at 8 frames of 16x16 (TPU compile time grows with the
    program), all parameters trained, on a (data 2, fsdp 2) mesh of a 4-chip v5p slice; `overrides`
    maps dotted keys to values."""
    config = train_config(batch_size=4)
    config.mesh.shape.update({"data": 2, "fsdp": 2, "tensor": 1})
    config.compile.topology = "v5p:2x2x1"
    for key, value in (overrides or {}).items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


# T5-small's width for the model's text, so that the encoder-in-step test below compiles the same
# step with the encoder added (T5-small at 8 tokens costs about what the tiny STUNet does).
SMALL_TEXT = {"text.encoder": "small", "model.text_dim": 512}
REPORT_SETTINGS = {"compile.find_max_batch": True, "compile.max_batch_per_chip": 1, **SMALL_TEXT}


@pytest.fixture(scope="module")
def tiny_report():
    """The compile report of the tiny STUNet's step on precomputed embeddings (one TPU compile)."""
    from lumiere_jax.train.compile_report import compile_report

    return compile_report(tiny_config(REPORT_SETTINGS))


@needs_libtpu
def test_tiny_stunet_train_step_on_a_v5p_slice(tiny_report):
    from lumiere_jax.models.report import model_report

    config, report = tiny_config(REPORT_SETTINGS), tiny_report
    assert (report["devices"], report["chips"], report["device_kind"]) == (4, 4, "TPU v5")
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert (report["global_batch"], report["batch_per_chip"], report["fits"]) == (4, 1.0, True)
    m = report["memory_per_device_gib"]
    assert m["aliased"] > 0  # the donated state is updated in place
    assert m["total"] == pytest.approx(m["arguments"] + m["outputs"] - m["aliased"] + m["temporaries"]
                                       + m["generated_code"], abs=0.003)
    assert report["hbm_headroom_gib"] == pytest.approx(95.0 - m["total"], abs=1e-3)
    assert report["flops_per_step"] == 4 * report["flops_per_device"]
    assert report["step_seconds_at_peak"] == pytest.approx(report["flops_per_device"] / 459e12, rel=1e-3)
    assert report["bytes_accessed_gib_per_device"] > m["arguments"]  # every weight is read at least once
    estimate = report["compiler_estimate"]  # the compiler's roofline time: never faster than the FLOPs at peak
    assert estimate["step_seconds"] >= report["step_seconds_at_peak"] and "estimate" in estimate["source"]
    assert estimate["mfu"] == pytest.approx(report["step_seconds_at_peak"] / estimate["step_seconds"], rel=1e-3)

    forward = model_report(config)["forward_flops_per_clip"]
    factor = report["flops_per_step"] / (forward * config.data.batch_size)
    assert factor == pytest.approx(BACKWARD_FACTOR, rel=0.25), factor

    # The search's bound (1 clip per chip) is the batch just compiled: answered without compiling again.
    assert report["max_batch"]["max_global_batch"] == 4 and report["max_batch"]["max_batch_per_chip"] == 1.0
    assert [t["global_batch"] for t in report["max_batch"]["tries"]] == [4]


@needs_libtpu
def test_encoding_in_the_step_puts_the_encoder_in_the_compiled_step(tiny_report):
    """With text.encode_in_step the frozen T5 encoder runs inside the TPU program: its weights are
    arguments (sharded over the mesh like the model's) and its forward pass is in the FLOPs. Against
    the same step on precomputed embeddings, the FLOPs grow by the encoder's forward pass alone (XLA's
    count of that program on the CPU, at the same batch) and the arguments by its weights per device."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lumiere_jax.text.checkpoint import abstract_encoder
    from lumiere_jax.text.encoder import encoder_config
    from lumiere_jax.train.compile_report import compile_report

    precomputed = tiny_report
    in_step = compile_report(tiny_config({**REPORT_SETTINGS, "text.encode_in_step": True}))
    graphdef, weights = nnx.split(abstract_encoder(encoder_config(tiny_config(SMALL_TEXT).text)))
    parameters = sum(x.size for x in jax.tree.leaves(weights))
    assert in_step["text"] == {"source": "T5 encoder in the step (frozen)", "encoder": "small", "variant": "t5_1_1",
                               "encoder_parameters": parameters}
    assert precomputed["text"] == {"source": "precomputed embeddings"}

    batch, length = 4, 8
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_)
    forward = jax.jit(lambda w, t, m: nnx.merge(graphdef, w)(t, m)).lower(weights, tokens, mask)
    encoder_flops = forward.cost_analysis()["flops"]
    added = in_step["flops_per_step"] - precomputed["flops_per_step"]
    assert added == pytest.approx(encoder_flops, rel=0.1), (added, encoder_flops)

    weight_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(weights))
    added_gib = in_step["memory_per_device_gib"]["arguments"] - precomputed["memory_per_device_gib"]["arguments"]
    # float32 weights, split over the 2 fsdp shards at most (some are replicated): between 1/2 and all of them
    assert weight_bytes / 2 / 2**30 - 0.002 <= added_gib <= weight_bytes / 2**30 + 0.002, (added_gib, weight_bytes)


@needs_libtpu
@pytest.mark.parametrize("overrides, message", [
    ({"data.batch_size": 6}, r"data.batch_size=6 must be a positive multiple of 4"),
    ({"text.encode_in_step": True}, "text.encoder='xxl' outputs 4096-wide embeddings but model.text_dim=32"),
    ({"mesh.shape.data": 4}, "needs 8 devices but 4 are available"),
])
def test_bad_settings_fail_before_compiling(overrides, message):
    from lumiere_jax.train.compile_report import compile_report

    with pytest.raises(ValueError, match=message):
        compile_report(tiny_config(overrides))


@needs_libtpu
@pytest.mark.parametrize("topology, message", [
    ("v5p-16", "compile.topology='v5p-16' must be GENERATION:AxB"),  # refused before libtpu loads
    ("v5p:3x5x7", "compile.topology='v5p:3x5x7' is not a TPU topology libtpu knows"),  # refused by libtpu
])
def test_cli_names_a_bad_topology_quietly(repo_root, tmp_path, topology, message):
    """One error line; libtpu, loaded compile-only on this machine without TPU chips, adds none."""
    proc = run_main(repo_root, "--config=configs/stunet_tiny.py", f"--workdir={tmp_path}", "--mode=compile_report",
                    f"--config.compile.topology={topology}")
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lumiere_jax:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not libtpu_noise(proc.stderr), proc.stderr


@needs_libtpu
def test_one_guided_denoising_step_over_windows_on_a_v5p_slice():
    """compile.program=denoise_step: the sampler's step for 16-frame clips of the 8-frame tiny STUNet is
    its windows (3: starts 0, 6, 8) times the two guidance branches in one model call, so the compiled
    FLOPs are those rows of the model's forward pass; the sampling estimate is num_steps such steps, each
    taken twice with sample.resample=2 (the step's program is the same for every sampler)."""
    from lumiere_jax.models.report import model_report
    from lumiere_jax.train.compile_report import compile_report

    overrides = {"compile.program": "denoise_step", "sample.batch_size": 4, "sample.num_frames": 16,
                 "sample.guidance_scale": 3.0, "sample.num_steps": 8, "sample.sampler": "ddpm", "sample.resample": 2}
    config = tiny_config(overrides)
    report = compile_report(config)
    assert (report["program"], report["frames"], report["windows_per_clip"], report["rows_per_step"]) == (
        "denoise_step", 16, 3, 4 * 3 * 2)
    assert report["fits"] and report["memory_per_device_gib"]["aliased"] == 0  # no state is donated
    forward = model_report(config)["forward_flops_per_clip"]  # one 8-frame window
    assert report["flops_per_step"] == pytest.approx(forward * report["rows_per_step"], rel=0.1)
    estimate, sampling = report["compiler_estimate"], report["sampling_estimate"]
    assert estimate["step_seconds"] >= report["step_seconds_at_peak"]
    assert report["sampling_passes_per_clip"] == 1  # extend would sample its windows in turn
    assert report["resample"] == 2
    assert sampling["seconds_per_clip"] == pytest.approx(estimate["step_seconds"] * 8 * 2 / 4, rel=1e-3)
    assert sampling["chip_seconds_per_clip"] == pytest.approx(sampling["seconds_per_clip"] * 4, rel=1e-3)
    assert "estimate" in sampling["source"]
    # One window per model call: the same FLOPs (the loop's, counted once by XLA, times its 3 windows),
    # a third of the rows per call, less memory.
    config.sample.windows_in_sequence = True
    in_sequence = compile_report(config)
    assert in_sequence["rows_per_model_call"] == report["rows_per_model_call"] // 3 == 8
    assert in_sequence["costs_scaled_by_windows"] == 3 and "costs_scaled_by_windows" not in report
    assert in_sequence["flops_per_step"] == pytest.approx(report["flops_per_step"], rel=0.02)
    assert in_sequence["memory_per_device_gib"]["temporaries"] < report["memory_per_device_gib"]["temporaries"]


@needs_libtpu
@pytest.mark.parametrize("overrides, message", [
    ({"compile.program": "sample"}, r"compile.program='sample' is not one of \('train', 'denoise_step'\)"),
    ({"compile.program": "denoise_step", "sample.batch_size": 3},
     r"sample.batch_size=3 must be a positive multiple of 4 .* for a denoise_step compile report"),
    ({"compile.program": "denoise_step", "compile.find_max_batch": True}, "set sample.batch_size instead"),
    ({"compile.program": "denoise_step", "sample.num_frames": 4}, r"sample.num_frames=4 is shorter than the model's 8-frame window"),
])
def test_bad_denoise_step_settings_fail_before_compiling(overrides, message):
    from lumiere_jax.train.compile_report import compile_report

    with pytest.raises(ValueError, match=message):
        compile_report(tiny_config(overrides))
