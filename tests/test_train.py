"""The trainer: exact resume, preemption, mesh changes, multi-process, frozen groups, learning."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from lumiere_jax import parallel
from lumiere_jax.models import param_groups
from lumiere_jax.models.weights import load_weights
from lumiere_jax.train.checkpointing import Checkpointer
from lumiere_jax.train.trainer import NonFiniteError, build_train_state, export, restore_train_state, train
from jax_events import jax_events
from train_helpers import SyntheticBatches, train_config

HERE = pathlib.Path(__file__).parent


def run(config, workdir, **kw):
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    batches = SyntheticBatches(config, mesh, parallel.logical_axis_rules(), **kw)
    return train(config, workdir, batches), batches


def saved_state(config, workdir, step):
    """The flat train state saved at `step`, restored onto `config`'s mesh, as numpy arrays."""
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    ckpt = Checkpointer(pathlib.Path(workdir) / "checkpoints", config.train, {})
    _, state, _ = restore_train_state(config, mesh, parallel.logical_axis_rules(), ckpt, step)
    ckpt.close()
    return {path: np.asarray(v.get_raw_value()) for path, v in nnx.to_flat_state(state)}


def assert_same_state(a, b, exact=True):
    assert a.keys() == b.keys()
    for path in a:
        if exact:
            np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))
        else:
            np.testing.assert_allclose(a[path], b[path], atol=2e-5, rtol=1e-4, err_msg=str(path))


def subprocess_train(workdir, steps, every, *extra, env=None):
    return subprocess.Popen([sys.executable, str(HERE / "run_train.py"), str(workdir), str(steps), str(every), *extra],
                            env=dict(os.environ, **(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def wait_for(path: pathlib.Path, proc, timeout=240):
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()[-3000:]}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run, checkpointed at 3 and 6."""
    config = train_config(steps=6)
    config.train.checkpoint_every = 3
    config.train.sample_every = 6  # previews from the EMA model at the end
    config.train.sample_steps = 4
    workdir = tmp_path_factory.mktemp("reference")
    summary, batches = run(config, workdir)
    return config, workdir, summary


def test_loss_falls_and_metrics_are_logged(reference):
    config, workdir, summary = reference
    assert summary["step"] == 6 and len(summary["losses"]) == 6
    assert summary["losses"][-1] < summary["losses"][0]
    assert summary["compile"]["flops_per_device"] > 0 and "temp_gib" in summary["compile"]
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "train_summary.json").read_text())["step"] == 6
    previews = workdir / "samples" / "step_00000006"
    from PIL import Image

    with Image.open(previews / "sample_0.gif") as gif:
        # 16x16 frames are enlarged 8x (nearest neighbour) so that a preview can be seen at all
        assert gif.n_frames == config.data.num_frames and gif.size == (128, 128)
    assert Image.open(previews / "samples.png").size == (128 * 8, 128 * 2)


def test_exact_resume_after_sigkill(reference, tmp_path):
    config, ref_dir, _ = reference
    proc = subprocess_train(tmp_path, 6, 3)
    wait_for(tmp_path / "checkpoints" / "3", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    summary, batches = run(config, tmp_path)
    assert summary["start_step"] == 3 and summary["step"] == 6
    assert batches.index == 6  # the data order resumed where the checkpoint left it
    assert_same_state(saved_state(config, tmp_path, 6), saved_state(config, ref_dir, 6))


def test_a_checkpoint_is_restored_without_initialising_a_model(reference):
    """Resuming (and exporting) reads the saved state straight into its shardings: no program is
    compiled, loaded from the cache or run to build a state the checkpoint then overwrites."""
    config, workdir, _ = reference
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    ckpt = Checkpointer(workdir / "checkpoints", config.train, {})
    with jax_events() as events:
        _, state, shardings = restore_train_state(config, mesh, parallel.logical_axis_rules(), ckpt, 3)
    ckpt.close()
    assert not [e for e in events if e.startswith(("/jax/core/compile/backend", "/jax/compilation_cache"))], events
    flat = dict(nnx.to_flat_state(state))
    for path, sharding in nnx.to_flat_state(shardings):
        value = flat[path].get_value()
        assert isinstance(value, jax.Array) and value.sharding == sharding.get_value(), path


def test_a_finished_run_started_again_trains_nothing_and_keeps_its_summary(reference):
    """The build scripts start every stage again (resuming what is done): a run already at its last
    step keeps the summary of the invocation that trained it, which provenance files cite, and
    neither restores nor draws anything."""
    config, workdir, summary = reference
    before = (workdir / "train_summary.json").read_text()
    again, batches = run(config, workdir)
    assert again == summary and batches.index == 0  # the data state was not even restored
    assert (workdir / "train_summary.json").read_text() == before
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]


def test_sigterm_checkpoints_the_current_step_and_exits_cleanly(tmp_path):
    proc = subprocess_train(tmp_path, 10_000, 10_000)
    wait_for(tmp_path / "tensorboard", proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["preempted"] and 0 < summary["step"] < 10_000
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [summary["step"]]


def test_checkpoint_restores_on_another_mesh_and_training_continues(reference, tmp_path):
    config, ref_dir, _ = reference
    other = train_config(steps=4)
    other.mesh.shape.data, other.mesh.shape.fsdp, other.mesh.shape.tensor = 2, 2, 2
    restored = saved_state(other, ref_dir, 3)
    assert_same_state(restored, saved_state(config, ref_dir, 3))
    import shutil

    shutil.copytree(ref_dir / "checkpoints" / "3", tmp_path / "checkpoints" / "3")
    summary, _ = run(other, tmp_path)
    assert summary["start_step"] == 3 and summary["step"] == 4
    assert np.isfinite(summary["losses"]).all()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(reference, tmp_path):
    config, ref_dir, _ = reference
    port = free_port()
    procs = [subprocess_train(tmp_path, 6, 3, "4", env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                                         "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
             for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    reference_summary = json.loads((ref_dir / "train_summary.json").read_text())
    np.testing.assert_allclose(summary["losses"], reference_summary["losses"], rtol=1e-5)
    assert_same_state(saved_state(config, tmp_path, 6), saved_state(config, ref_dir, 6), exact=False)


def test_t2i_inflation_and_frozen_spatial_weights(tmp_path):
    t2i = train_config(steps=2)
    t2i.model.temporal.enabled = False
    train(t2i, tmp_path / "t2i", SyntheticBatches(t2i, parallel.make_mesh({"data": -1}), parallel.logical_axis_rules()))
    exported = export(t2i, tmp_path / "t2i")

    video = train_config(steps=3)
    video.train.trainable = "temporal"
    video.train.init_from = str(exported)
    summary, _ = run(video, tmp_path / "stunet")
    state = saved_state(video, tmp_path / "stunet", 3)
    mesh = parallel.make_mesh({"data": -1})
    t2i_model = build_train_state(t2i, mesh, parallel.logical_axis_rules()).model
    assert load_weights(exported, t2i_model) == "full"
    spatial = {("model",) + p: np.asarray(v.get_raw_value()) for p, v in nnx.to_flat_state(nnx.state(t2i_model, nnx.Param))}
    for path, value in spatial.items():  # every spatial parameter came from the T2I, bit for bit, and stayed
        np.testing.assert_array_equal(state[path], value, err_msg=str(path))
    init = build_train_state(video, mesh, parallel.logical_axis_rules())
    temporal = {("model",) + p: np.asarray(v.get_raw_value())
                for p, v in nnx.to_flat_state(nnx.state(init.model, param_groups.TEMPORAL))}
    moved = [p for p, v in temporal.items() if not np.array_equal(state[p], v)]
    assert len(moved) > len(temporal) // 3
    assert not any(p[0] == "optimizer" and "mu" in p and p[3:] in [k[1:] for k in spatial] for p in state)


def test_nonfinite_updates_are_skipped_then_stop_the_run(tmp_path):
    config = train_config(steps=3)
    summary, _ = run(config, tmp_path / "one", nan_steps={1})
    assert summary["last_metrics"]["train/nonfinite_total"] == 1
    state = saved_state(config, tmp_path / "one", 3)
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")

    config.train.max_nonfinite_steps = 1
    with pytest.raises(NonFiniteError, match="2 non-finite updates in a row up to step 2"):
        run(config, tmp_path / "many", nan_steps={0, 1, 2})


def test_gradient_accumulation_over_microbatches(tmp_path):
    config = train_config(steps=2)
    config.train.microbatches = 2
    summary, _ = run(config, tmp_path)
    assert summary["step"] == 2 and np.isfinite(summary["losses"]).all()
    config.train.microbatches = 3
    with pytest.raises(ValueError, match="batch size 8 is not divisible by train.microbatches=3"):
        run(config, tmp_path / "bad")


def test_rematerialised_training_matches_the_plain_run(reference, tmp_path):
    """model.remat inside the jitted step (value_and_grad over merged parameters): the reference run's
    losses and, after 3 steps, its whole train state (to float rounding: recomputation fuses differently)."""
    config, ref_dir, ref_summary = reference
    remat = train_config(steps=3)
    remat.model.remat = "full"
    remat.train.checkpoint_every = 3
    summary, _ = run(remat, tmp_path)
    np.testing.assert_allclose(summary["losses"], ref_summary["losses"][:3], rtol=1e-5)
    assert_same_state(saved_state(remat, tmp_path, 3), saved_state(config, ref_dir, 3), exact=False)


def test_saving_a_replicated_state_compiles_nothing(tmp_path):
    """A checkpoint of arrays replicated over the 8 devices is written by one replica (no
    replica-parallel slicing, whose every slice is a small uncached compile: ~30 s per save here)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from lumiere_jax.models.weights import save_weights

    replicated = NamedSharding(parallel.make_mesh({"data": -1}), PartitionSpec())
    params = nnx.State({f"w{i}": jax.device_put(np.full((8 * (i + 1), 16), i, np.float32), replicated)
                        for i in range(6)})
    compiles = []
    listener = lambda event, seconds, **kw: compiles.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        save_weights(tmp_path / "export", params, {})
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [e for e in compiles if e == "/jax/core/compile/backend_compile_duration"] == []
    assert (tmp_path / "export" / "params").is_dir()
