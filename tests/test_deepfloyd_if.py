"""DeepFloyd IF stage I / II: converted diffusers checkpoints compute what diffusers computes.

The references are tiny random IF-shaped diffusers U-Nets (tests/if_helpers.py), saved as
safetensors so the real converter path runs; our models load them into a (data=2, fsdp=4) mesh.
"""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lumiere_jax import parallel
from lumiere_jax.diffusion import DDPMCosineSchedule, ddim_sample
from lumiere_jax.diffusion.schedule import ddpm_cosine_logsnr, ddpm_index
from lumiere_jax.models import param_groups
from lumiere_jax.models.conditioning import call_model, upsample
from lumiere_jax.models.diffusers_if import load_diffusers_unet
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.unet import UNet, build_unet
from lumiere_jax.parallel import state_shardings
from lumiere_jax.text.checkpoint import CheckpointError

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from if_helpers import (  # noqa: E402  (needs diffusers)
    SMALL_STAGE_I, STAGE_I, STAGE_II, TEXT_DIM, TEXT_LEN, build_diffusers_unet, diffusers_forward, our_model_config,
)

STEPS = np.array([0, 431, 999])  # DDPM steps: the cleanest, a middle one, pure noise
FRAMES = 4  # two temporal downsamplings in the tiny inflation


class Stage:
    """A saved diffusers U-Net and our inflated STUNet loaded from it on a (data=2, fsdp=4) mesh."""

    def __init__(self, kwargs, directory, max_shard_size=None):
        self.unet = build_diffusers_unet(kwargs)
        save = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        self.unet.save_pretrained(str(directory), safe_serialization=True, **save)
        self.path = directory
        self.dcfg = json.loads((directory / "config.json").read_text())
        self.mesh = parallel.make_mesh({"data": 2, "fsdp": 4})
        self.rules = parallel.logical_axis_rules()
        self.model_config = our_model_config(self.dcfg, temporal=True)
        self.model = build_unet(self.model_config, seed=1, mesh=self.mesh, rules=self.rules)
        self.initial = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(self.model, nnx.Param))}
        assert load_diffusers_unet(directory, self.model) == "spatial"
        self.forward = nnx.jit(lambda m, x, logsnr, text, mask, aug: m(x, logsnr, text, mask, aug_logsnr=aug))
        self.image_forward = nnx.jit(
            lambda m, x, logsnr, text, mask, aug: m(x, logsnr, text, mask, aug_logsnr=aug, image_mode=True))

    @property
    def lowres(self) -> bool:
        return self.dcfg.get("class_embed_type") == "timestep"

    def inputs(self, seed):
        rng = np.random.default_rng(seed)
        b = len(STEPS)
        image = rng.standard_normal((b, 16, 16, self.dcfg["in_channels"])).astype(np.float32)
        text = rng.standard_normal((b, TEXT_LEN, TEXT_DIM)).astype(np.float32)
        labels = np.array([250, 0, 999]) if self.lowres else None
        return image, text, labels

    def ours(self, image, text, labels, frames=1, image_mode=False):
        table = ddpm_cosine_logsnr()
        video = jnp.repeat(jnp.asarray(image)[:, None], frames, axis=1)
        aug = None if labels is None else jnp.asarray(table[labels], jnp.float32)
        run = self.image_forward if image_mode else self.forward
        with jax.default_matmul_precision("highest"):
            out = run(self.model, video, jnp.asarray(table[STEPS], jnp.float32), jnp.asarray(text),
                      jnp.ones(text.shape[:2], bool), aug)
        return np.asarray(out)


@pytest.fixture(scope="module")
def stage_i(tmp_path_factory):
    return Stage(STAGE_I, tmp_path_factory.mktemp("if_i"))


@pytest.fixture(scope="module")
def stage_ii(tmp_path_factory):  # saved sharded: diffusion_pytorch_model.safetensors.index.json + shards
    return Stage(STAGE_II, tmp_path_factory.mktemp("if_ii"), max_shard_size="300KB")


@pytest.fixture(scope="module")
def small_stage_i(tmp_path_factory):
    return Stage(SMALL_STAGE_I, tmp_path_factory.mktemp("if_i_small"))


@pytest.fixture(params=["stage_i", "stage_ii"])
def stage(request):
    return request.getfixturevalue(request.param)


def assert_close(ours, reference):
    """Within 1e-4 relative: per example in norm, and elementwise against the output's scale."""
    for o, r in zip(ours, reference):
        assert np.linalg.norm(o - r) <= 1e-4 * np.linalg.norm(r)
        assert np.abs(o - r).max() <= 1e-4 * np.abs(r).max()


def test_ddpm_table_is_diffusers_squaredcos_cap_v2_and_its_index_inverts_it():
    from diffusers import DDPMScheduler

    # diffusers accumulates the product in float32, ours in float64
    alphas_cumprod = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double().numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-ddpm_cosine_logsnr())), alphas_cumprod, rtol=1e-5, atol=1e-7)
    table = jnp.asarray(ddpm_cosine_logsnr(), jnp.float32)
    np.testing.assert_array_equal(ddpm_index(table), np.arange(1000))
    schedule = DDPMCosineSchedule()
    np.testing.assert_array_equal(schedule.logsnr(jnp.array([1.0, 0.5, 0.001])), table[jnp.array([999, 499, 0])])
    assert float(ddpm_index(jnp.asarray(30.0))) == 0.0 and float(ddpm_index(jnp.asarray(-30.0))) == 999.0


def test_converted_model_matches_diffusers_in_image_mode(stage):
    """Several DDPM steps and prompts in one batch; IF-II also at several low-res noise levels."""
    for seed in (0, 1):
        image, text, labels = stage.inputs(seed)
        reference = diffusers_forward(stage.unet, image, STEPS, text, labels)
        assert reference.shape[-1] == 6  # epsilon, then the learned-range variance
        assert_close(stage.ours(image, text, labels, image_mode=True)[:, 0], reference)


def test_inflated_model_on_a_static_clip_matches_diffusers_on_every_frame(stage):
    image, text, labels = stage.inputs(2)
    reference = diffusers_forward(stage.unet, image, STEPS, text, labels)
    clip = stage.ours(image, text, labels, frames=FRAMES)
    for frame in range(FRAMES):
        assert_close(clip[:, frame], reference)


def test_image_mode_of_the_inflated_model_is_exactly_the_converted_t2i_unet(stage_i):
    """The T2I U-Net (temporal disabled) holding the same converted weights, on the same clip."""
    cfg = dataclasses.replace(stage_i.model.cfg, temporal=False)
    t2i = nnx.eval_shape(lambda: UNet(cfg, rngs=Rngs(0)))
    param_groups.load_spatial(t2i, nnx.state(stage_i.model, param_groups.SPATIAL))
    image, text, _ = stage_i.inputs(5)
    video = jnp.repeat(jnp.asarray(image)[:, None], FRAMES, axis=1) + jnp.arange(FRAMES)[:, None, None, None] / 10
    args = (jnp.asarray(ddpm_cosine_logsnr()[STEPS], jnp.float32), jnp.asarray(text), jnp.ones(text.shape[:2], bool))
    inflated = stage_i.image_forward(stage_i.model, video, *args, None)
    np.testing.assert_array_equal(np.asarray(inflated), np.asarray(stage_i.forward(t2i, video, *args, None)))


def test_weights_load_into_the_mesh_sharding_and_temporal_ones_keep_their_init(stage):
    state = nnx.state(stage.model, nnx.Param)
    expected = dict(nnx.to_flat_state(state_shardings(state, stage.mesh, stage.rules)))
    temporal = {p for p, _ in nnx.to_flat_state(nnx.state(stage.model, param_groups.TEMPORAL))}
    assert temporal
    for path, variable in nnx.to_flat_state(state):
        array = variable.get_value()
        assert array.sharding.is_equivalent_to(expected[path].get_value(), array.ndim), path
        same = np.array_equal(np.asarray(variable.get_value()), stage.initial[path])
        assert same == (path in temporal), path
    kernel = stage.model.down[1].attns[0].text_k.kernel.get_value()
    assert kernel.sharding.spec[0] == "fsdp" and len(kernel.addressable_shards[0].data) == kernel.shape[0] // 4


@pytest.mark.parametrize("cap", [0.0, 1.5])
def test_ddim_matches_the_diffusers_scheduler_loop(stage_i, cap):
    """Four deterministic DDIM steps (trailing spacing, eps, x0 at the end) from the same noise;
    with `cap`, IF's dynamic thresholding (95th percentile, sample_max_value 1.5) on both sides,
    eps re-derived from the thresholded x0 (diffusers' use_clipped_model_output, as ours does)."""
    from diffusers import DDIMScheduler

    steps, rng = 4, np.random.default_rng(3)
    noise = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    text = rng.standard_normal((2, TEXT_LEN, TEXT_DIM)).astype(np.float32)
    scheduler = DDIMScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", set_alpha_to_one=True,
                              clip_sample=False, prediction_type="epsilon", thresholding=cap > 0,
                              dynamic_thresholding_ratio=0.95, sample_max_value=cap or 1.0)
    scheduler.set_timesteps(steps)
    assert list(scheduler.timesteps) == [999, 749, 499, 249]
    sample = torch.from_numpy(noise.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = stage_i.unet(sample, t, torch.from_numpy(text)).sample[:, :3]
            sample = scheduler.step(eps, t, sample, eta=0.0, use_clipped_model_output=cap > 0).prev_sample
    reference = sample.numpy().transpose(0, 2, 3, 1)

    cond = {"text": jnp.asarray(text), "mask": jnp.ones((2, TEXT_LEN), bool)}

    def our_ddim(model, z):  # the model an argument, not constants folded into the program
        predict = lambda z, logsnr: call_model(model, z, logsnr, cond, image_mode=True)  # noqa: E731
        return ddim_sample(predict, z, None, DDPMCosineSchedule(), num_steps=steps, parameterization="eps",
                           threshold_percentile=95.0 if cap else 0.0, threshold_max=cap)

    with jax.default_matmul_precision("highest"):
        ours = nnx.jit(our_ddim)(stage_i.model, jnp.asarray(noise)[:, None])
    assert_close(np.asarray(ours)[:, 0], reference)
    if cap:  # the cap bound: every value within [-1, 1] after dividing by s <= 1.5
        assert np.abs(reference).max() <= 1.0 + 1e-6 and np.abs(reference).max() > 0.5


def test_align_corners_upsampling_matches_torch():
    low = np.random.default_rng(4).standard_normal((2, 3, 5, 5, 3)).astype(np.float32)
    ours = np.asarray(upsample(jnp.asarray(low), 17, align_corners=True))
    flat = torch.from_numpy(low.reshape(6, 5, 5, 3).transpose(0, 3, 1, 2).copy())
    reference = torch.nn.functional.interpolate(flat, (17, 17), mode="bilinear", align_corners=True)
    np.testing.assert_allclose(ours, reference.numpy().transpose(0, 2, 3, 1).reshape(2, 3, 17, 17, 3), atol=1e-6)
    assert not np.allclose(np.asarray(upsample(jnp.asarray(low), 17)), ours, atol=1e-3)


def rewrite(stage, directory, edit):
    """A copy of stage I's checkpoint with `edit(tensors)` applied to its tensors."""
    tensors = safetensors_numpy.load_file(str(stage.path / "diffusion_pytorch_model.safetensors"))
    edit(tensors)
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(stage.dcfg))
    safetensors_numpy.save_file(tensors, str(directory / "diffusion_pytorch_model.safetensors"))
    return directory


def test_converter_names_missing_unexpected_and_misshapen_tensors(stage_i, tmp_path):
    name = "down_blocks.1.attentions.0.add_k_proj.weight"
    missing = rewrite(stage_i, tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=r"lacks 1 tensor\(s\).*add_k_proj\.weight"):
        load_diffusers_unet(missing, stage_i.model)
    unexpected = rewrite(stage_i, tmp_path / "unexpected", lambda t: t.update(extra_head=np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match="does not use: \\['extra_head'\\]"):
        load_diffusers_unet(unexpected, stage_i.model)
    shaped = rewrite(stage_i, tmp_path / "shape", lambda t: t.update({name: t[name][:, :32]}))
    with pytest.raises(CheckpointError, match=r"down\.1\.attns\.0\.text_k\.kernel.*add_k_proj.*\(32, 64\).*\(96, 64\)"):
        load_diffusers_unet(shaped, stage_i.model)
    other = dict(stage_i.dcfg, layers_per_block=3)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps(other))
    with pytest.raises(CheckpointError, match=r"model.res_blocks_per_level=\[2, 2, 2\] \(needs \[3, 3, 3\]\)"):
        load_diffusers_unet(tmp_path / "other", stage_i.model)
    (tmp_path / "other" / "config.json").write_text(json.dumps(dict(stage_i.dcfg, act_fn="silu")))
    with pytest.raises(CheckpointError, match="act_fn='silu'"):
        load_diffusers_unet(tmp_path / "other", stage_i.model)


def test_temporal_only_training_from_the_checkpoint_keeps_every_converted_weight(small_stage_i, tmp_path):
    """train.init_from = a (two-level) IF-I diffusers directory; two steps of train.trainable=temporal; the
    export's spatial weights are the converted ones bit for bit, and the temporal ones have moved."""
    import orbax.checkpoint as ocp
    from flax import traverse_util

    from lumiere_jax.train.trainer import export, train
    from train_helpers import SyntheticBatches, train_config

    config = train_config(steps=2)
    config.seed = 1  # the temporal initialisation of small_stage_i.model
    config.model = our_model_config(small_stage_i.dcfg, temporal=True)
    config.data.update(num_frames=FRAMES, resolution=16)
    config.text.max_length = TEXT_LEN
    config.diffusion.update(parameterization="eps", schedule="ddpm_cosine")
    config.train.update(trainable="temporal", init_from=str(small_stage_i.path), learning_rate=1e-2)
    mesh = parallel.make_mesh(dict(config.mesh.shape))
    train(config, tmp_path, SyntheticBatches(config, mesh, parallel.logical_axis_rules()))
    with ocp.StandardCheckpointer() as ckpt:
        saved = traverse_util.flatten_dict(ckpt.restore(export(config, tmp_path) / "params"))
    converted = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(small_stage_i.model, nnx.Param))}
    temporal = {p for p, _ in nnx.to_flat_state(nnx.state(small_stage_i.model, param_groups.TEMPORAL))}
    as_key = lambda p: tuple(str(k) for k in p)  # noqa: E731
    saved = {as_key(p): np.asarray(v) for p, v in saved.items()}
    assert saved.keys() == {as_key(p) for p in converted}
    for path, value in converted.items():
        if path not in temporal:
            np.testing.assert_array_equal(saved[as_key(path)], value, err_msg=str(path))
    moved = [p for p in temporal if not np.array_equal(saved[as_key(p)], small_stage_i.initial[p])]
    assert len(moved) > len(temporal) // 3


def test_if_configs_take_the_shape_of_a_given_unet_directory(stage_i, stage_ii):
    from configs import if_ssr, if_stunet
    from lumiere_jax.models.diffusers_if import check_model_config
    from lumiere_jax.models.unet import UNetConfig

    for module, stage in ((if_stunet, stage_i), (if_ssr, stage_ii)):
        config = module.get_config(str(stage.path))
        config.model.temporal.attention_head_dim = 16  # the tiny models' coarsest level has 96 channels
        if config.model.temporal.downsample_levels:
            config.model.temporal.downsample_levels = (0, 1)
        check_model_config(stage.dcfg, UNetConfig.from_config(config.model), str(stage.path))
        assert config.text.conventions == "deepfloyd_if" and config.train.trainable == "temporal"
    assert if_ssr.get_config().ssr.sample_aug_logsnr == pytest.approx(float(ddpm_cosine_logsnr()[250]))
