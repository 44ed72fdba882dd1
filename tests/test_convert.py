"""btd_jax.convert without torch: naming table, layout conversions, inference, schedules, refusals, CLI."""

import dataclasses
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

from btd_jax import configs, convert, diffusion
from btd_jax.configs import DiffusionConfig
from btd_jax.models.unet import abstract_params

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity_v1_s3_c1.npz")


def tiny_cfg(**model_kw):
    base = configs.get("tiny")
    return dataclasses.replace(base, model=dataclasses.replace(base.model, **model_kw))


def random_params(model_cfg, seed=0):
    """Random float32 parameters of the right shapes (no XLA compile, unlike init)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), abstract_params(model_cfg))


def assert_trees_equal(a, b):
    fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


@pytest.mark.parametrize("key,path", [
    ("init_conv.weight", ("init_conv", "weight")),
    ("time_mlp.1.weight", ("time_mlp_1", "weight")),
    ("downs.0.0.block1.proj.weight", ("downs_0_0", "block1", "proj", "weight")),
    ("downs.1.2.to_out.0.bias", ("downs_1_2", "to_out_0", "bias")),
    ("downs.0.3.1.weight", ("downs_0_3_1", "weight")),
    ("ups.2.0.mlp.1.bias", ("ups_2_0", "mlp_1", "bias")),
    ("mid_block1.res_conv.weight", ("mid_block1", "res_conv", "weight")),
    ("mid_attn.mem_kv", ("mid_attn", "mem_kv")),
])
def test_key_table_is_a_bijection(key, path):
    assert convert.torch_key_to_flax_path(key) == path
    assert convert.flax_path_to_torch_key(path) == key


def test_conv_kernel_oihw_to_hwio_matches_torch_conv():
    """Pitfall: PyTorch NCHW/OIHW vs Flax NHWC/HWIO (and padding=1 == explicit (1, 1))."""
    rng = np.random.default_rng(0)
    w, b, x = rng.normal(size=(5, 3, 3, 3)), rng.normal(size=5), rng.normal(size=(2, 3, 6, 7))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ref = np.asarray(ref) + b[None, :, None, None]
    name, kernel = convert._leaf_to_flax("weight", w)
    assert name == "kernel" and kernel.shape == (3, 3, 3, 5)
    conv = nn.Conv(5, (3, 3), padding=((1, 1), (1, 1)))
    out = conv.apply({"params": {"kernel": kernel, "bias": b}}, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, rtol=1e-5, atol=1e-5)
    assert convert._leaf_to_torch("kernel", kernel)[1].shape == w.shape


def test_linear_weight_is_transposed():
    rng = np.random.default_rng(1)
    w, b, x = rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=(2, 3))
    name, kernel = convert._leaf_to_flax("weight", w)
    out = nn.Dense(4).apply({"params": {"kernel": kernel, "bias": b}}, x)
    np.testing.assert_allclose(out, x @ w.T + b, rtol=1e-5)
    assert convert._leaf_to_flax("weight", np.ones(4))[0] == "scale"  # GroupNorm gain
    assert convert._leaf_to_flax("g", np.ones((1, 4, 1, 1)))[1].shape == (4,)  # RMSNorm gain


@pytest.mark.parametrize("model_kw", [
    dict(),  # v1 (tiny preset)
    dict(version="v2"),
    dict(version="v2", init_dim=16, attn_heads=3, attn_dim_head=4, num_mem_kv=2, full_attn=(True, True)),
    dict(version="v2", self_condition=True, learned_sinusoidal_cond=True, learned_sinusoidal_dim=8),
    dict(version="v2", learned_variance=True),
    dict(channels=3, full_attn=(True, False)),
])
def test_round_trip_flax_torch_flax_is_exact(model_kw):
    cfg = tiny_cfg(**model_kw)
    params = random_params(cfg.model)
    sd = convert.to_torch_state_dict(params, cfg)
    assert set(convert.SCHEDULE_BUFFERS) <= set(sd)
    assert all(k.startswith("model.") for k in sd if k not in convert.SCHEDULE_BUFFERS)
    back, cfg2 = convert.from_torch_state_dict(sd, base=cfg)
    assert_trees_equal(params, back)
    assert cfg2.model == cfg.model
    assert cfg2.diffusion == cfg.diffusion


def test_v1_reads_heads_as_four_like_lucidrains_183():
    # 1.8.3 builds Attention(dim) with heads=4, dim_head=32: hidden 128
    cfg = tiny_cfg(attn_heads=4, attn_dim_head=32)
    sd = convert.to_torch_state_dict(random_params(cfg.model), cfg, include_schedule=False)
    assert sd["model.mid_attn.to_qkv.weight"].shape == (384, 16, 1, 1)
    assert "model.downs.0.0.block1.norm.weight" in sd and not any(k.endswith("mem_kv") for k in sd)
    _, cfg2 = convert.from_torch_state_dict(sd, base=configs.get("tiny"))  # base says 2 x 8: width differs
    assert (cfg2.model.attn_heads, cfg2.model.attn_dim_head, cfg2.model.version) == (4, 32, "v1")
    _, cfg3 = convert.from_torch_state_dict(sd, base=configs.get("tiny"), attn_heads=8, attn_dim_head=16)
    assert (cfg3.model.attn_heads, cfg3.model.attn_dim_head) == (8, 16)  # explicit override wins


@pytest.mark.parametrize("sched,objective,min_snr,steps", [
    ("linear", "pred_noise", False, 100), ("cosine", "pred_x0", False, 50), ("sigmoid", "pred_v", True, 1000),
    ("sigmoid", "pred_noise", False, 1000),
])
def test_schedule_and_objective_are_recovered_from_buffers(sched, objective, min_snr, steps):
    d = DiffusionConfig(image_size=8, timesteps=steps, sampling_timesteps=10, beta_schedule=sched,
                        objective=objective, min_snr_loss_weight=min_snr)
    bufs = diffusion.make_schedule(d).buffers()
    base = DiffusionConfig(image_size=8, sampling_timesteps=10)  # defaults: sigmoid, pred_noise
    got = convert.match_schedule(bufs, base)
    assert (got.beta_schedule, got.timesteps, got.objective, got.min_snr_loss_weight) == (sched, steps, objective, min_snr)


def test_unknown_schedule_is_refused_naming_the_buffer():
    bufs = diffusion.make_schedule(DiffusionConfig(timesteps=100, sampling_timesteps=10)).buffers()
    bufs["betas"] = bufs["betas"] * 1.01
    with pytest.raises(ValueError, match=r"match no known beta schedule.*betas differs"):
        convert.match_schedule(bufs)
    del bufs["loss_weight"]
    with pytest.raises(ValueError, match=r"missing \['loss_weight'\]"):
        convert.match_schedule(bufs)


def _tiny_sd(**model_kw):
    cfg = tiny_cfg(**model_kw)
    return convert.to_torch_state_dict(random_params(cfg.model), cfg), cfg


def test_missing_and_unexpected_keys_are_named():
    sd, cfg = _tiny_sd()
    del sd["model.ups.0.1.res_conv.bias"]
    sd["model.ups.0.1.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"missing keys \['model.ups.0.1.res_conv.bias'\]; "
                                         r"unexpected keys \['model.ups.0.1.extra.weight'\]"):
        convert.from_torch_state_dict(sd, base=cfg)


def test_wrong_shape_and_foreign_layout_are_refused():
    sd, cfg = _tiny_sd()
    sd["model.ups.0.0.block1.proj.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match=r"model.ups.0.0.block1.proj.bias: shape \(5,\)"):
        convert.from_torch_state_dict(sd, base=cfg)
    with pytest.raises(ValueError, match=r"not a lucidrains Unet state dict: missing key 'init_conv.weight'"):
        convert.from_torch_state_dict({"fc.weight": np.zeros((2, 2))})
    sd, cfg = _tiny_sd()
    sd["model.mid_attn.mem_kv"] = np.zeros((2, 4, 4, 8), np.float32)  # mem_kv but GroupNorm blocks
    with pytest.raises(ValueError, match="cannot tell the generation"):
        convert.from_torch_state_dict(sd, base=cfg)
    sd, cfg = _tiny_sd()
    sd["step"] = np.zeros(())
    with pytest.raises(ValueError, match=r"unexpected keys \['step'\]"):
        convert.from_torch_state_dict(sd, base=cfg)


def test_bare_unet_and_ema_state_dicts():
    sd, cfg = _tiny_sd(version="v2")
    params, _ = convert.from_torch_state_dict(sd, base=cfg)
    bare = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    p2, cfg2 = convert.from_torch_state_dict(bare, base=cfg)
    assert_trees_equal(params, p2)
    assert cfg2.diffusion == cfg.diffusion  # no buffers: the base's schedule
    ema = {f"ema_model.{k}": v for k, v in sd.items()}
    ema.update({f"online_model.{k}": v * 0 for k, v in sd.items()}, initted=np.array(True), step=np.array(3))
    p3, _ = convert.from_torch_state_dict(ema, base=cfg)
    assert_trees_equal(params, p3)


def test_load_torch_checkpoint_without_torch_says_how_to_fix(tmp_path):
    try:
        import torch  # noqa: F401
        pytest.skip("torch is installed; tests/test_parity_live.py covers load_torch_checkpoint")
    except ImportError:
        pass
    f = tmp_path / "m.pt"
    f.write_bytes(b"x")
    with pytest.raises(ImportError, match=r"pip install 'btd_jax\[torch\]'"):
        convert.load_torch_checkpoint(str(f))
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        convert.load_torch_checkpoint(str(tmp_path / "missing.pt"))
    with pytest.raises(ValueError, match="which must be"):
        convert.load_torch_checkpoint(str(f), which="online")


def test_cli_convert_writes_a_workdir_that_scorer_loads(tmp_path):
    from btd_jax.score import Scorer

    wd = tmp_path / "wd"
    r = subprocess.run([sys.executable, "-m", "btd_jax.cli", "convert", "--torch", FIXTURE, "--config", "ct",
                        "--workdir", str(wd), "--image_size", "32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lucidrains v1 Unet dim=8" in r.stdout and "schedule sigmoid x 1000" in r.stdout
    assert not re.search(r"^I\d{4} |orbax", r.stderr, re.M), r.stderr[-2000:]  # no orbax INFO lines
    scorer = Scorer.load(str(wd))
    assert scorer.cfg.model.dim_mults == (1, 2, 4) and scorer.cfg.diffusion.image_size == 32
    z = np.load(FIXTURE)
    scores = scorer.score(z["x01"].transpose(0, 2, 3, 1), steps=1)
    np.testing.assert_allclose(scores, z["btd_full"], atol=1e-4)
    np.save(tmp_path / "x.npy", z["x01"].transpose(0, 2, 3, 1)[..., 0])
    r = subprocess.run([sys.executable, "-m", "btd_jax.cli", "score", "--workdir", str(wd), "--input",
                        str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.csv")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not re.search(r"^I\d{4} |orbax", r.stderr, re.M), r.stderr[-2000:]  # no orbax INFO lines
    # a second conversion into the same workdir is refused with one line, exit 2
    r = subprocess.run([sys.executable, "-m", "btd_jax.cli", "convert", "--torch", FIXTURE, "--workdir", str(wd)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "already holds checkpoints" in r.stderr.strip().splitlines()[-1]
