"""STUNet: the inflation invariants of Lumiere (identity at init), parameter groups and sharding."""
import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.stunet_tiny import get_config
from lumiere_jax import parallel
from lumiere_jax.models import param_groups
from lumiere_jax.models.rngs import Rngs
from lumiere_jax.models.temporal import TemporalAttention, TemporalConvBlock, TemporalDownsample, TemporalUpsample
from lumiere_jax.models.unet import UNet, UNetConfig, build_unet
from random_arrays import normal

B, T, H, L = 2, 16, 32, 8


@pytest.fixture(scope="module")
def config():
    return get_config()


def move_off_init(module, seed, scale):
    """Adds scale * N(0, 1) to every parameter of `module`, in place (weights as if trained). The
    noise is numpy's: jax would compile one random program per parameter shape."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(nnx.state(module, nnx.Param))
    nnx.update(module, jax.tree.unflatten(treedef, [x + scale * rng.standard_normal(x.shape, np.float32)
                                                    for x in leaves]))


@pytest.fixture(scope="module")
def t2i(config):
    """A stand-in for a pre-trained T2I U-Net: every parameter moved off its initial value.

    Freshly initialised, the output conv is zero and the test below would hold trivially.
    """
    model = build_unet(config.model, temporal=False, seed=1)
    move_off_init(model, 7, 0.2)
    return model


@pytest.fixture(scope="module")
def stunet(config, t2i):
    """STUNet inflated from the T2I: its spatial part loaded, temporal part at init."""
    model = build_unet(config.model, seed=2)
    param_groups.load_spatial(model, nnx.state(t2i, nnx.Param))
    return model


@pytest.fixture(scope="module")
def inputs():
    video = normal(0, (B, T, H, H, 3))
    logsnr = jnp.array([-3.0, 2.0])
    text = normal(1, (B, L, 32))
    mask = jnp.arange(L)[None, :] < jnp.array([[5], [8]])  # padded prompts
    return video, logsnr, text, mask


def forward(model, *args, **kw):
    return nnx.jit(lambda m, *a: m(*a, **kw))(model, *args)


def test_static_video_equals_t2i_per_frame(t2i, stunet, inputs):
    video, logsnr, text, mask = inputs
    static = jnp.broadcast_to(video[:, :1], video.shape)
    out = forward(stunet, static, logsnr, text, mask)
    per_frame = forward(t2i, video[:, :1], logsnr, text, mask)
    assert float(jnp.abs(per_frame).max()) > 0.1  # the comparison is not between zeros
    np.testing.assert_allclose(out, jnp.broadcast_to(per_frame, out.shape), atol=1e-5, rtol=1e-5)


def test_image_mode_is_exactly_the_t2i_unet(t2i, stunet, inputs):
    video, logsnr, text, mask = inputs
    out = forward(stunet, video, logsnr, text, mask, image_mode=True)
    ref = forward(t2i, video, logsnr, text, mask)
    np.testing.assert_array_equal(out, ref)
    # and it really bypasses time: frame 3 alone gives the same output as within the clip
    alone = forward(stunet, video[:, 3:4], logsnr, text, mask, image_mode=True)
    np.testing.assert_allclose(alone[:, 0], out[:, 3], atol=1e-5)


def test_temporal_modules_see_time(stunet, inputs):
    """After the temporal part leaves its init, frames influence each other (and not in image mode)."""
    video, logsnr, text, mask = inputs
    model = nnx.clone(stunet)
    state = nnx.state(model, param_groups.TEMPORAL)
    nnx.update(model, jax.tree.map(lambda x: x + 0.1, state))
    out = forward(model, video, logsnr, text, mask)
    changed = video.at[:, -1].add(1.0)
    out2 = forward(model, changed, logsnr, text, mask)
    assert float(jnp.abs(out2[:, 0] - out[:, 0]).max()) > 1e-4


@pytest.fixture(scope="module")
def text_in_time(config, t2i):
    """The STUNet with both text-to-motion options on (frame embedding, conditioned temporal convs),
    inflated from the same T2I."""
    model_cfg = config.model.copy_and_resolve_references()
    model_cfg.temporal.frame_embedding = True
    model_cfg.temporal.conditioned_convs = True
    model = build_unet(model_cfg, seed=2)
    param_groups.load_spatial(model, nnx.state(t2i, nnx.Param))
    return model


def test_text_in_time_is_identity_at_init_and_temporal_parameters(t2i, text_in_time, inputs):
    video, logsnr, text, mask = inputs
    static = jnp.broadcast_to(video[:, :1], video.shape)
    per_frame = forward(t2i, video[:, :1], logsnr, text, mask)
    np.testing.assert_allclose(forward(text_in_time, static, logsnr, text, mask),
                               jnp.broadcast_to(per_frame, static.shape), atol=1e-5, rtol=1e-5)
    paths = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(text_in_time, param_groups.TEMPORAL))}
    assert any(p.startswith("temporal_frame_embedding/") for p in paths)
    assert any("temporal_convs" in p and "/emb_proj/" in p for p in paths)


def test_frame_embedding_reads_place_in_clip_and_caption(text_in_time, inputs):
    """Trained off its init, identical frames of a static clip get different outputs by where they
    sit in the clip and by what the caption says; image mode (frames made independently) ignores it."""
    video, logsnr, text, mask = inputs
    model = nnx.clone(text_in_time)
    module = model.temporal_frame_embedding
    move_off_init(module, 5, 0.1)
    static = jnp.broadcast_to(video[:1, :1], (B, T, H, H, 3))
    same = (logsnr[:1].repeat(B), text[:1].repeat(B, 0), mask[:1].repeat(B, 0))
    out = forward(model, static, *same)
    assert float(jnp.abs(out[:, 0] - out[:, -1]).max()) > 1e-3
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)  # folded batch-major: each clip gets its own positions
    # The embedding is not position + caption but a function of both: how it changes from frame to
    # frame depends on the caption (what a direction word needs).
    embedded = module(normal(6, (2, model.text_proj.out_features)), T)
    step = embedded[:, 1:] - embedded[:, :-1]
    assert float(jnp.abs(step[0] - step[1]).max()) > 1e-3
    framewise = forward(model, static, *same, image_mode=True)
    np.testing.assert_allclose(framewise, forward(text_in_time, static, *same, image_mode=True), atol=1e-6)
    np.testing.assert_allclose(framewise[:, 0], framewise[:, -1], atol=1e-5)


def test_conditioned_temporal_convs_follow_the_caption():
    """The block's temporal filtering depends on the embedding it is given, frame by frame."""
    block = TemporalConvBlock(8, 3, 4, Rngs(0), emb_dim=6)
    block.conv2.kernel[...] = 0.1 * normal(1, block.conv2.kernel.shape)
    x = normal(2, (2, 5, 3, 3, 8))
    emb = normal(3, (2, 5, 6))
    out = block(x, emb)
    changed = block(x, emb.at[1, 4].add(1.0))
    np.testing.assert_allclose(changed[0], out[0], atol=1e-6)  # other clips untouched
    frame_change = jnp.abs(changed[1] - out[1]).max(axis=(1, 2, 3))
    assert float(frame_change[4]) > 1e-3 and float(frame_change[:3].max()) < 1e-6  # kernel 3: frames 3, 4 only
    assert TemporalConvBlock(8, 3, 4, Rngs(0)).emb_proj is None  # the paper's block takes no embedding


def test_exports_older_than_the_text_in_time_options_still_load(config):
    old = config.model.copy_and_resolve_references()
    del old.temporal["frame_embedding"], old.temporal["conditioned_convs"]
    cfg = UNetConfig.from_config(old)
    assert cfg.temporal_frame_embedding is False and cfg.temporal_conditioned_convs is False
    assert not config.model.temporal.frame_embedding and not config.model.temporal.conditioned_convs  # paper default


def test_temporal_down_and_upsampling_are_exact_at_init():
    x = normal(3, (2, 10, 4, 4, 8))
    down = TemporalDownsample(8, 3, Rngs(0))
    up = TemporalUpsample(8, 3, Rngs(0))
    np.testing.assert_array_equal(down(x), x[:, ::2])
    np.testing.assert_array_equal(up(x), jnp.repeat(x, 2, axis=1))


@pytest.mark.parametrize("axes, kernel", [((1, 2), (3, 3)), ((1,), (3, 1, 1)), ((1,), (5, 1, 1)), ((2,), (1, 3))])
def test_upsampling_in_phases_is_repeat_then_convolution(axes, kernel):
    """`upsample_conv` (the spatial and temporal upsamplings' convolution at the input's rate) equals
    the convolution of the input repeated 2x along `axes`, which it never forms."""
    from lumiere_jax.models.layers import conv, upsample_conv

    layer = conv(6, 5, kernel, Rngs(0), padding=[(k // 2, k // 2) for k in kernel])
    layer.bias[...] = normal(1, (5,))
    x = normal(2, (2, 5, 4, 3, 6)[:len(kernel) + 1] + (6,))
    repeated = x
    for axis in axes:
        repeated = jnp.repeat(repeated, 2, axis=axis)
    got = upsample_conv(layer, x, axes)
    assert got.shape == repeated.shape[:-1] + (5,)
    np.testing.assert_allclose(got, layer(repeated), rtol=1e-5, atol=1e-5)


def test_temporal_attention_only_at_the_coarsest_level(stunet, config):
    cfg = stunet.cfg
    found = [path for path, node in nnx.iter_graph(stunet) if isinstance(node, TemporalAttention)]
    assert len(found) == cfg.temporal_attention_depth > 0
    assert all(path[0] == "temporal_attention" for path in found)  # the middle block, not a level
    for node in (n for _, n in nnx.iter_graph(stunet) if isinstance(n, TemporalAttention)):
        assert node.qkv.in_features == cfg.level_channels[-1]
    coarsest = cfg.num_levels - 1
    for lv in range(cfg.num_levels):
        for level in (stunet.down[lv], stunet.up[lv]):
            inside = [n for _, n in nnx.iter_graph(level) if isinstance(n, TemporalAttention)]
            assert not inside
            assert (level.temporal_convs is None) == (lv == coarsest)
    convs = [p for p, n in nnx.iter_graph(stunet) if isinstance(n, TemporalConvBlock)]
    assert len(convs) == (cfg.num_levels - 1) * (2 * cfg.num_res_blocks + 1)


def test_frames_not_divisible_by_the_temporal_factor_is_a_clear_error(stunet, inputs):
    video, logsnr, text, mask = inputs
    with pytest.raises(ValueError, match=r"num_frames=10 is not divisible by 2\*\*2=4"):
        stunet(video[:, :10], logsnr, text, mask)
    # image mode has no such constraint
    assert forward(stunet, video[:1, :3], logsnr[:1], text[:1], mask[:1], image_mode=True).shape == (1, 3, H, H, 3)


def test_parameter_groups_partition_the_model(config):
    model = nnx.eval_shape(lambda: UNet(dataclasses.replace(UNetConfig.from_config(config.model),
                                                           conditioning_channels=4), rngs=Rngs(0)))
    count = lambda f: sum(x.size for x in jax.tree.leaves(nnx.state(model, f)))  # noqa: E731
    groups = {name: count(f) for name, f in param_groups.GROUPS.items()}
    assert all(v > 0 for v in groups.values())
    assert sum(groups.values()) == count(nnx.Param)
    t2i = abstract_t2i(config.model)
    assert count(param_groups.SPATIAL) - groups["spatial"] == 0
    assert groups["spatial"] == sum(x.size for x in jax.tree.leaves(nnx.state(t2i, nnx.Param)))


def abstract_t2i(model_config) -> UNet:
    """The text-to-image U-Net of `model_config` (temporal modules off), shapes only."""
    cfg = dataclasses.replace(UNetConfig.from_config(model_config), temporal=False)
    return nnx.eval_shape(lambda: UNet(cfg, rngs=Rngs(0)))


def test_load_spatial_rejects_a_mismatched_checkpoint(config, stunet):
    other = config.model.copy_and_resolve_references()
    other.base_channels = 8
    small = abstract_t2i(other)
    with pytest.raises(ValueError, match="shape mismatch at"):
        param_groups.load_spatial(nnx.clone(stunet), nnx.state(small, nnx.Param))


def test_frozen_spatial_step_changes_only_temporal_parameters(stunet, inputs):
    video, logsnr, text, mask = inputs
    model = nnx.clone(stunet)
    before = flat_params(model)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=param_groups.NEW)
    target = jnp.flip(video, axis=1)  # a target that needs time to be mixed

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(m):
            return jnp.mean((m(video, logsnr, text, mask) - target) ** 2)

        grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, param_groups.NEW))(model)
        optimizer.update(model, grads)

    for _ in range(2):
        step(model, optimizer)
    after = flat_params(model)
    temporal = set(flat_params(model, param_groups.TEMPORAL))
    moved = {path for path in before if not np.array_equal(before[path], after[path])}
    assert not moved - temporal, f"spatial parameters changed: {sorted(moved - temporal)[:3]}"
    assert len(moved) > len(temporal) // 2


def flat_params(model, what=nnx.Param) -> dict:
    """A copy of the model's parameters as {path: numpy array}."""
    return {path: np.array(var[...]) for path, var in nnx.to_flat_state(nnx.state(model, what))}


def test_conditioning_channels_are_zero_initialised(config, t2i, inputs):
    video, logsnr, text, mask = inputs
    cfg = config.model.copy_and_resolve_references()
    cfg.conditioning_channels = 4
    model = build_unet(cfg, temporal=False)
    param_groups.load_spatial(model, nnx.state(t2i, nnx.Param))
    cond = normal(5, video.shape[:-1] + (4,))
    out = forward(model, jnp.concatenate([video, cond], -1), logsnr, text, mask)
    np.testing.assert_array_equal(out, forward(t2i, video, logsnr, text, mask))
    with pytest.raises(ValueError, match=r"expected video \(B, T, H, W, 7\)"):
        model(video, logsnr, text, mask)


@pytest.mark.parametrize("which", ["stunet", "text_in_time"])
def test_sharded_forward_equals_single_device(request, which, inputs):
    stunet = request.getfixturevalue(which)
    video, logsnr, text, mask = inputs
    ref = forward(stunet, video, logsnr, text, mask)
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = parallel.logical_axis_rules()
    sharded = parallel.shard_module(stunet, mesh, rules)
    kernel = sharded.down[0].blocks[0].conv1.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")
    video4 = jnp.concatenate([video, video[::-1]])
    args = (video4, jnp.concatenate([logsnr, logsnr[::-1]]), jnp.concatenate([text, text[::-1]]),
            jnp.concatenate([mask, mask[::-1]]))
    args = [jax.device_put(a, parallel.batch_sharding(mesh, rules, a.ndim)) for a in args]
    with jax.set_mesh(mesh):
        out = forward(sharded, *args)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(out[:B], ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(out[B:], ref[::-1], atol=1e-5, rtol=1e-5)


def test_create_sharded_builds_parameters_in_place(config):
    mesh = parallel.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = build_unet(config.model, mesh=mesh, rules=parallel.logical_axis_rules())
    kernel = model.up[1].blocks[0].conv2.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "tensor", "fsdp")
    single = build_unet(config.model)
    np.testing.assert_array_equal(kernel, single.up[1].blocks[0].conv2.kernel[...])


def test_one_compiled_initialisation_serves_every_seed(config, caplog):
    """create_sharded passes the seed's key to the initialisation program as an argument: models of
    one config built from two seeds differ, and come from one program (one persistent-cache key;
    with the seed a constant of the program, every seed compiled its own)."""
    caplog.set_level(logging.DEBUG, logger="jax._src.compiler")
    one, two = build_unet(config.model, seed=1), build_unet(config.model, seed=2)
    keys = re.findall(r"for 'jit__lambda' with key '([^']+)'", caplog.text)
    assert len(keys) == 2 and keys[0] == keys[1], keys
    kernel = lambda model: np.asarray(model.down[0].blocks[0].conv1.kernel[...])  # noqa: E731
    assert not np.array_equal(kernel(one), kernel(two))


def test_bfloat16_compute(config, inputs):
    video, logsnr, text, mask = inputs
    cfg = config.model.copy_and_resolve_references()
    cfg.dtype = "bfloat16"
    model = build_unet(cfg)
    assert model.down[0].blocks[0].conv1.kernel[...].dtype == jnp.float32  # parameters stay float32
    out = forward(model, video, logsnr, text, mask)
    assert out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())


def test_bad_model_config_names_the_key(config):
    cfg = config.model.copy_and_resolve_references()
    cfg.temporal.downsample_levels = (0, 5)
    with pytest.raises(ValueError, match=r"model.temporal.downsample_levels \[5\]"):
        UNetConfig.from_config(cfg)
    cfg = config.model.copy_and_resolve_references()
    cfg.norm_groups = 5
    with pytest.raises(ValueError, match="model.norm_groups=5"):
        UNetConfig.from_config(cfg)


def test_rematerialisation_keeps_the_gradients(config, stunet, inputs):
    video, logsnr, text, mask = inputs
    cfg = config.model.copy_and_resolve_references()
    cfg.remat = "full"
    remat = build_unet(cfg, seed=2)
    nnx.update(remat, nnx.state(stunet, nnx.Param))

    def grads(model):
        loss = lambda m: jnp.mean(m(video, logsnr, text, mask) ** 2)  # noqa: E731
        return nnx.jit(lambda m: nnx.grad(loss)(m))(model)

    a, b = jax.tree.leaves(grads(stunet)), jax.tree.leaves(grads(remat))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=1e-5)


def test_patches_round_trip_and_the_patched_model_runs(config, inputs):
    from lumiere_jax.models.unet import patchify, unpatchify

    x = normal(9, (3, 8, 12, 5))
    patches = patchify(x, 2)
    assert patches.shape == (3, 4, 6, 20)
    np.testing.assert_array_equal(patches[1, 2, 3, :5], x[1, 4, 6])  # patch (2, 3) starts at pixel (4, 6)
    np.testing.assert_array_equal(unpatchify(patches, 2), x)
    video, logsnr, text, mask = inputs
    cfg = config.model.copy_and_resolve_references()
    cfg.patch_size, cfg.conditioning_channels = 2, 4
    model = build_unet(cfg)
    model.out_conv.kernel[...] = jnp.ones_like(model.out_conv.kernel[...])
    cond = jnp.zeros(video.shape[:-1] + (4,))
    out = forward(model, jnp.concatenate([video, cond], -1), logsnr, text, mask)
    assert out.shape == video.shape and float(jnp.abs(out).max()) > 0
    with pytest.raises(ValueError, match="divisible by patch_size \\* 2\\*\\*\\(levels-1\\) = 8"):
        model(jnp.zeros((1, 16, 12, 12, 7)), logsnr[:1], text[:1], mask[:1])
