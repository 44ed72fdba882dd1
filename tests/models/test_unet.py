"""The Flax lucidrains U-Net: porting pitfalls one by one, shapes, dtypes, names and error messages.

End-to-end agreement with the real PyTorch code is in tests/test_parity.py; here each piece is checked
against a NumPy transcription of the reference formula.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from btd_jax import configs
from btd_jax.configs import ModelConfig
from btd_jax.models import unet
from btd_jax.models.unet import Unet

TINY = configs.get("tiny").model  # v1, dim 8, dim_mults (1, 2), 2 heads x 8


def random_params(model_cfg, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32),
                        unet.abstract_params(model_cfg))


@jax.jit
def _apply_tiny(params, x, t):
    return Unet.from_config(TINY).apply({"params": params}, x, t)


# ------------------------------------------------------------------------------------- pitfalls

def test_groupnorm_matches_torch_formula():
    """torch GroupNorm: biased variance over (C/G, H, W) per group, eps 1e-5, affine per channel."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 5, 16)).astype(np.float32) * 3 + 1
    scale, bias = rng.normal(size=16), rng.normal(size=16)
    out = unet.GroupNorm(8).apply({"params": {"scale": scale, "bias": bias}}, x)
    g = x.reshape(2, 4, 5, 8, 2).astype(np.float64)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    ref = ((g - mean) / np.sqrt(var + 1e-5)).reshape(x.shape) * scale + bias
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_rmsnorm_is_l2_normalise_times_g_times_sqrt_c():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 3, 6)).astype(np.float32)
    x[0, 0, 0] = 0.0  # F.normalize's eps keeps zero vectors at zero
    g = rng.normal(size=6).astype(np.float32)
    out = np.asarray(unet.RMSNorm().apply({"params": {"g": g}}, x))
    norm = np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    np.testing.assert_allclose(out, x / norm * g * math.sqrt(6), rtol=1e-5, atol=1e-6)
    assert np.all(out[0, 0, 0] == 0)


def test_downsample_rearrange_orders_channels_c_p1_p2():
    """``b c (h p1) (w p2) -> b (c p1 p2) h w``: new channel = c * 4 + p1 * 2 + p2."""
    x = np.arange(1 * 4 * 6 * 3, dtype=np.float32).reshape(1, 4, 6, 3)
    out = np.asarray(unet._downsample_rearrange(jnp.asarray(x)))
    assert out.shape == (1, 2, 3, 12)
    for i, j, c, p1, p2 in [(0, 0, 0, 0, 1), (1, 2, 2, 1, 0), (1, 1, 1, 1, 1), (0, 2, 2, 0, 0)]:
        assert out[0, i, j, c * 4 + p1 * 2 + p2] == x[0, 2 * i + p1, 2 * j + p2, c]


def test_upsample_is_nearest_2x():
    x = np.arange(2 * 3 * 1, dtype=np.float32).reshape(1, 2, 3, 1)
    out = np.asarray(unet._upsample_nearest(jnp.asarray(x)))
    np.testing.assert_array_equal(out[0, :, :, 0], np.kron(x[0, :, :, 0], np.ones((2, 2))))


def test_sinusoidal_embedding_is_sin_then_cos_with_half_minus_one():
    t = np.array([0, 1, 17, 999])
    out = np.asarray(unet.sinusoidal_embedding(jnp.asarray(t), 8, 10000.0))
    freqs = np.exp(np.arange(4) * -(math.log(10000) / 3))
    arg = t[:, None] * freqs[None]
    np.testing.assert_allclose(out, np.concatenate([np.sin(arg), np.cos(arg)], -1), rtol=1e-5, atol=2e-5)


def test_time_mlp_uses_exact_gelu():
    params = random_params(TINY, seed=2, scale=1.0)
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.array([3, 70], jnp.int32)
    _, state = jax.jit(lambda p: Unet.from_config(TINY).apply({"params": p}, x, t, capture_intermediates=True))(params)
    h1 = np.asarray(state["intermediates"]["time_mlp_1"]["__call__"][0], np.float64)
    h3 = np.asarray(state["intermediates"]["time_mlp_3"]["__call__"][0], np.float64)
    w, b = np.asarray(params["time_mlp_3"]["kernel"]), np.asarray(params["time_mlp_3"]["bias"])
    exact = (0.5 * h1 * (1 + erf(h1 / math.sqrt(2)))) @ w + b
    tanh = np.asarray(jax.nn.gelu(h1, approximate=True)) @ w + b
    np.testing.assert_allclose(h3, exact, rtol=1e-4, atol=1e-4)
    assert np.abs(h3 - tanh).max() > 10 * np.abs(h3 - exact).max()


def _np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _attn_params(rng, c, heads, dh, mem, linear):
    p = {"norm": {"g": rng.normal(size=c)}, "to_qkv": {"kernel": rng.normal(size=(1, 1, c, 3 * heads * dh)) * 0.3}}
    if linear:
        p["to_out_0"] = {"kernel": rng.normal(size=(1, 1, heads * dh, c)) * 0.3, "bias": rng.normal(size=c)}
        p["to_out_1"] = {"g": rng.normal(size=c)}
        if mem:
            p["mem_kv"] = rng.normal(size=(2, heads, dh, mem))
    else:
        p["to_out"] = {"kernel": rng.normal(size=(1, 1, heads * dh, c)) * 0.3, "bias": rng.normal(size=c)}
        if mem:
            p["mem_kv"] = rng.normal(size=(2, heads, mem, dh))
    return jax.tree.map(lambda a: np.asarray(a, np.float32), p)


def _np_rms(x, g):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12) * g * math.sqrt(x.shape[-1])


@pytest.mark.parametrize("mem", [0, 2])
def test_full_attention_matches_reference(mem):
    """Scale dim_head ** -0.5, heads split as ``(h c)``, memory k/v prepended (2.x)."""
    rng = np.random.default_rng(3)
    b, hh, ww, c, heads, dh = 2, 3, 2, 6, 2, 4
    x = rng.normal(size=(b, hh, ww, c)).astype(np.float32)
    p = _attn_params(rng, c, heads, dh, mem, linear=False)
    out = np.asarray(unet.Attention(heads, dh, mem, jnp.float32).apply({"params": p}, x))
    xn = _np_rms(x, p["norm"]["g"]).reshape(b, hh * ww, c)
    q, k, v = np.split(xn @ p["to_qkv"]["kernel"][0, 0], 3, axis=-1)
    q, k, v = (a.reshape(b, hh * ww, heads, dh).transpose(0, 2, 1, 3) for a in (q, k, v))  # b h n d
    if mem:
        k = np.concatenate([np.broadcast_to(p["mem_kv"][0], (b, heads, mem, dh)), k], axis=2)
        v = np.concatenate([np.broadcast_to(p["mem_kv"][1], (b, heads, mem, dh)), v], axis=2)
    attn = _np_softmax(np.einsum("bhid,bhjd->bhij", q, k) * dh ** -0.5, -1)
    o = np.einsum("bhij,bhjd->bhid", attn, v).transpose(0, 2, 1, 3).reshape(b, hh * ww, heads * dh)
    ref = (o @ p["to_out"]["kernel"][0, 0] + p["to_out"]["bias"]).reshape(b, hh, ww, c)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mem", [0, 3])
def test_linear_attention_matches_reference(mem):
    """q softmax over features, k softmax over positions (memory slots included), q * dim_head ** -0.5."""
    rng = np.random.default_rng(4)
    b, hh, ww, c, heads, dh = 2, 2, 4, 5, 2, 3
    x = rng.normal(size=(b, hh, ww, c)).astype(np.float32)
    p = _attn_params(rng, c, heads, dh, mem, linear=True)
    out = np.asarray(unet.LinearAttention(heads, dh, mem, jnp.float32).apply({"params": p}, x))
    xn = _np_rms(x, p["norm"]["g"]).reshape(b, hh * ww, c)
    q, k, v = np.split(xn @ p["to_qkv"]["kernel"][0, 0], 3, axis=-1)
    q, k, v = (a.reshape(b, hh * ww, heads, dh).transpose(0, 2, 3, 1) for a in (q, k, v))  # b h d n
    if mem:
        k = np.concatenate([np.broadcast_to(p["mem_kv"][0], (b, heads, dh, mem)), k], axis=-1)
        v = np.concatenate([np.broadcast_to(p["mem_kv"][1], (b, heads, dh, mem)), v], axis=-1)
    q = _np_softmax(q, -2) * dh ** -0.5
    k = _np_softmax(k, -1)
    ctx = np.einsum("bhdn,bhen->bhde", k, v)
    o = np.einsum("bhde,bhdn->bhen", ctx, q).transpose(0, 3, 1, 2).reshape(b, hh * ww, heads * dh)
    o = o @ p["to_out_0"]["kernel"][0, 0] + p["to_out_0"]["bias"]
    ref = _np_rms(o, p["to_out_1"]["g"]).reshape(b, hh, ww, c)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------- model

def test_param_names_mirror_torch_keys():
    names = set(unet.abstract_params(TINY))
    assert names == {"init_conv", "time_mlp_1", "time_mlp_3", "downs_0_0", "downs_0_1", "downs_0_2", "downs_0_3_1",
                     "downs_1_0", "downs_1_1", "downs_1_2", "downs_1_3", "mid_block1", "mid_attn", "mid_block2",
                     "ups_0_0", "ups_0_1", "ups_0_2", "ups_0_3_1", "ups_1_0", "ups_1_1", "ups_1_2", "ups_1_3",
                     "final_res_block", "final_conv"}
    p = unet.abstract_params(TINY)
    assert set(p["downs_0_0"]) == {"mlp_1", "block1", "block2"}  # no res_conv when widths agree
    assert set(p["ups_0_0"]["block1"]["norm"]) == {"scale", "bias"}  # v1: GroupNorm
    assert set(p["downs_0_2"]) == {"norm", "to_qkv", "to_out_0", "to_out_1"}  # linear attention, no mem_kv
    v2 = unet.abstract_params(dataclasses.replace(TINY, version="v2"))
    assert set(v2["ups_0_0"]["block1"]["norm"]) == {"g"}
    assert v2["mid_attn"]["mem_kv"].shape == (2, 2, 4, 8) and v2["downs_0_2"]["mem_kv"].shape == (2, 2, 8, 4)


def test_init_params_float32_and_shapes():
    params = unet.init_params(TINY, 8, jax.random.PRNGKey(0))
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, unet.abstract_params(TINY))
    g = params["ups_0_0"]["block1"]["norm"]
    assert np.all(np.asarray(g["scale"]) == 1) and np.all(np.asarray(g["bias"]) == 0)


def test_forward_shape_dtype_and_time_dependence():
    params = random_params(TINY)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
    out = _apply_tiny(params, x, jnp.array([0, 5, 99], jnp.int32))
    assert out.shape == (3, 8, 8, 1) and out.dtype == jnp.float32
    out2 = _apply_tiny(params, x, jnp.array([1, 5, 99], jnp.int32))
    assert float(jnp.abs(out2[0] - out[0]).max()) > 1e-4
    np.testing.assert_array_equal(out2[1:], out[1:])  # samples are independent


def test_v2_self_condition_and_learned_variance():
    cfg = dataclasses.replace(TINY, version="v2", self_condition=True, learned_variance=True, channels=2)
    model = Unet.from_config(cfg)
    assert model.out_channels == 4
    params = random_params(cfg)
    assert params["init_conv"]["kernel"].shape == (7, 7, 4, 8)
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 2))
    t = jnp.array([3, 4], jnp.int32)
    fn = jax.jit(lambda p, x, c: model.apply({"params": p}, x, t, c))
    zero, cond = fn(params, x, jnp.zeros_like(x)), fn(params, x, x)
    assert zero.shape == (2, 8, 8, 4) and zero.dtype == jnp.float32
    default = jax.jit(lambda p, x: model.apply({"params": p}, x, t))(params, x)
    np.testing.assert_allclose(default, zero, rtol=1e-6, atol=1e-6)  # x_self_cond defaults to zeros
    assert float(jnp.abs(cond - zero).max()) > 1e-4


def test_bfloat16_compute_keeps_float32_params_and_output():
    cfg16 = dataclasses.replace(TINY, dtype="bfloat16")
    params = random_params(TINY)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 1))
    t = jnp.array([2, 50], jnp.int32)
    out16 = jax.jit(lambda p: Unet.from_config(cfg16).apply({"params": p}, x, t))(params)
    out32 = _apply_tiny(params, x, t)
    assert out16.dtype == jnp.float32
    assert {a.dtype for a in jax.tree.leaves(unet.abstract_params(cfg16))} == {jnp.dtype("float32")}
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert 0 < rel < 0.1, rel


# ------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("shape,match", [
    ((1, 12, 16, 1), r"input size 12x16 is not divisible by 8 = 2\*\*\(num_stages-1\)"),
    ((1, 16, 16, 3), r"input has 3 channels but the model was built for channels=1"),
    ((16, 16, 1), r"must be NHWC"),
])
def test_bad_input_shapes_are_refused(shape, match):
    cfg = ModelConfig(dim=8, dim_mults=(1, 2, 2, 4))
    with pytest.raises(ValueError, match=match):
        unet.check_input_shape(shape, cfg)
    unet.check_input_shape((1, 16, 24, 1), cfg)  # fine: both divisible by 8


def test_bad_input_raises_at_apply_and_bad_time_shape():
    model = Unet.from_config(TINY)
    params = random_params(TINY)
    with pytest.raises(ValueError, match=r"input size 9x8 is not divisible by 2"):
        model.apply({"params": params}, jnp.zeros((1, 9, 8, 1)), jnp.zeros((1,), jnp.int32))
    with pytest.raises(ValueError, match=r"time must have shape \(batch,\) = \(2,\)"):
        model.apply({"params": params}, jnp.zeros((2, 8, 8, 1)), jnp.zeros((1,), jnp.int32))


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match=r"GroupNorm\(8\).*widths \[12\]"):
        Unet.from_config(ModelConfig(dim=12, dim_mults=(1, 2)))
    with pytest.raises(ValueError, match="needs init_dim == dim"):
        Unet.from_config(ModelConfig(dim=8, init_dim=16, dim_mults=(1, 2)))
    Unet.from_config(ModelConfig(dim=12, init_dim=16, dim_mults=(1, 2), version="v2"))  # fine in 2.x
