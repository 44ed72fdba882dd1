"""group_norm (custom VJP) against a NumPy GroupNorm and JAX's autodiff of the plain formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax.models.norms import group_norm


def _numpy_group_norm(x, scale, bias, groups, eps=1e-5):
    b, h, w, c = x.shape
    xg = x.astype(np.float64).reshape(b, h, w, groups, c // groups)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape) * scale + bias


def _autodiff_group_norm(x, scale, bias, groups, eps=1e-5):
    b, h, w, c = x.shape
    xg = x.reshape(b, h, w, groups, c // groups)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.square(xg - mean).mean(axis=(1, 2, 4), keepdims=True)
    return ((xg - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape,groups", [((2, 5, 7, 16), 8), ((3, 4, 4, 6), 3), ((1, 3, 3, 4), 1)])
def test_matches_numpy_and_autodiff(shape, groups):
    ks = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(ks[0], shape) * 3.0 + 1.5
    scale = jax.random.normal(ks[1], shape[-1:])
    bias = jax.random.normal(ks[2], shape[-1:])
    y = jax.jit(group_norm, static_argnums=3)(x, scale, bias, groups)
    np.testing.assert_allclose(y, _numpy_group_norm(np.asarray(x), np.asarray(scale), np.asarray(bias), groups),
                               atol=2e-5)
    ct = jax.random.normal(ks[3], shape)  # a random cotangent, so no gradient term cancels by symmetry

    def loss(fn):
        return lambda x, s, b: jnp.sum(fn(x, s, b, groups) * ct)

    got = jax.jit(jax.grad(loss(group_norm), argnums=(0, 1, 2)))(x, scale, bias)
    want = jax.grad(loss(_autodiff_group_norm), argnums=(0, 1, 2))(x, scale, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-5)


def test_keeps_dtype_and_refuses_bad_groups():
    x = jnp.ones((1, 2, 2, 8), jnp.bfloat16)
    assert group_norm(x, jnp.ones(8), jnp.zeros(8), 4).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="divisible by groups=3"):
        group_norm(jnp.ones((1, 2, 2, 8)), jnp.ones(8), jnp.zeros(8), 3)
