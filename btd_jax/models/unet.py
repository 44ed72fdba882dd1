"""lucidrains' denoising-diffusion-pytorch U-Net in Flax linen (NHWC), both generations.

``version='v1'`` is denoising-diffusion-pytorch 1.8.x (the BTD authors' weights): the ResnetBlock's
``Block`` normalises with ``GroupNorm(resnet_block_groups, eps=1e-5)``; attention has no memory
key/values (1.8.3 itself fixes heads/dim_head at 4/32; other values here are an extension).
``version='v2'`` is 2.x: ``RMSNorm`` in ``Block``, ``num_mem_kv`` learned memory key/values in every
attention layer, ``attn_heads``/``attn_dim_head`` options.

Submodule names mirror the PyTorch state-dict keys with every ``.<digits>`` folded into the previous
name with ``_`` (``downs.0.2.to_out.0.weight`` -> ``downs_0_2/to_out_0/kernel``), so that
``btd_jax.convert`` is a mechanical table. Shapes in comments are NHWC: ``(B, H, W, C)``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.configs import ModelConfig
from btd_jax.models.norms import group_norm

__all__ = ["Unet", "init_params", "abstract_params", "downsample_factor", "check_input_shape"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _conv(features: int, kernel: int, dtype, name: str, use_bias: bool = True) -> nn.Conv:
    # Explicit symmetric padding = PyTorch's ``padding=kernel // 2`` for odd kernels.
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), use_bias=use_bias,
                   dtype=dtype, param_dtype=jnp.float32, name=name)


def _l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """``torch.nn.functional.normalize``: x / max(||x||, 1e-12)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1e-12)


class RMSNorm(nn.Module):
    """lucidrains RMSNorm: ``normalize(x, channel axis) * g * sqrt(C)`` (float32 statistics)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        g = self.param("g", nn.initializers.ones, (c,), jnp.float32)
        y = _l2_normalize(x.astype(jnp.float32)) * g * (c ** 0.5)
        return y.astype(x.dtype)


class GroupNorm(nn.Module):
    """``torch.nn.GroupNorm(groups, C, eps=1e-5)``: biased variance over (H, W, C/groups), float32."""

    groups: int
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return group_norm(x, scale, bias, self.groups, self.eps)  # custom VJP: fast on XLA:CPU


class Block(nn.Module):
    """conv3x3 -> norm -> optional FiLM ``x * (scale + 1) + shift`` -> SiLU."""

    dim_out: int
    version: str
    groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, scale_shift: Optional[Tuple[jax.Array, jax.Array]] = None) -> jax.Array:
        x = _conv(self.dim_out, 3, self.dtype, "proj")(x)
        x = GroupNorm(self.groups, name="norm")(x) if self.version == "v1" else RMSNorm(name="norm")(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return nn.silu(x)


class ResnetBlock(nn.Module):
    dim_out: int
    version: str
    groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array) -> jax.Array:
        """x (B, H, W, C_in), t_emb (B, T) -> (B, H, W, dim_out)."""
        ss = nn.Dense(self.dim_out * 2, dtype=self.dtype, param_dtype=jnp.float32, name="mlp_1")(nn.silu(t_emb))
        scale, shift = jnp.split(ss[:, None, None, :], 2, axis=-1)
        h = Block(self.dim_out, self.version, self.groups, self.dtype, name="block1")(x, (scale, shift))
        h = Block(self.dim_out, self.version, self.groups, self.dtype, name="block2")(h)
        res = x if x.shape[-1] == self.dim_out else _conv(self.dim_out, 1, self.dtype, "res_conv")(x)
        return h + res


def _heads_split(t: jax.Array, heads: int) -> jax.Array:
    """(B, H, W, heads*d) -> (B, N, heads, d); channel order ``(h c)`` as lucidrains' rearrange."""
    b, hh, ww, c = t.shape
    return t.reshape(b, hh * ww, heads, c // heads)


class _Conv1x1Params(nn.Module):
    """The parameters of a 1x1 ``nn.Conv`` (same names, shapes, initialisers) as an (in, out) matrix."""

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, in_features: int) -> Tuple[jax.Array, Optional[jax.Array]]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, in_features, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32) if self.use_bias else None
        return kernel.reshape(in_features, self.features), bias


class LinearAttention(nn.Module):
    """Linear attention (softmax over features for q, over positions for k), RMSNorm pre/post.

    lucidrains computes v = to_v(x), ctx = softmax_n(k)^T v per head, out = q ctx, then to_out(out).
    The products are reassociated here so that neither v nor out, (B, N, heads * dim_head) each, is
    built: ctx = (exp(k)^T x) W_v / sum_n exp(k) and y = q (ctx W_out) + b. Same function to float
    rounding (parity fixtures), a third less time on CPU at 96 px (``experiments/bench_ops.py``).
    """

    heads: int
    dim_head: int
    num_mem_kv: int  # 0 for v1
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        n, heads, d = hh * ww, self.heads, self.dim_head
        hidden = heads * d
        xf = RMSNorm(name="norm")(x).reshape(b, n, c)
        w_qkv, _ = _Conv1x1Params(hidden * 3, use_bias=False, name="to_qkv")(c)
        w_q, w_k, w_v = jnp.split(w_qkv, 3, axis=1)  # (c, hidden) each; channels ordered (head, d)
        xd = xf.astype(self.dtype)
        q, k = (jnp.einsum("bnc,ck->bnk", xd, w.astype(self.dtype)).astype(jnp.float32) for w in (w_q, w_k))
        q = jax.nn.softmax(q.reshape(b, n, heads, d), axis=-1).reshape(b, n, hidden) * (d ** -0.5)
        k_max = k.max(axis=1)  # (b, hidden)
        if self.num_mem_kv:
            # torch layout (2, heads, dim_head, M): memory slots are M extra positions.
            mem = self.param("mem_kv", nn.initializers.normal(1.0), (2, heads, d, self.num_mem_kv), jnp.float32)
            mk, mv = (jnp.transpose(m, (2, 0, 1)).reshape(self.num_mem_kv, hidden) for m in mem)
            k_max = jnp.maximum(k_max, mk.max(axis=0))
        k_max = jax.lax.stop_gradient(k_max)  # the softmax is shift-invariant; the shift keeps exp finite
        ek = jnp.exp(k - k_max[:, None, :])
        denom = ek.sum(axis=1)
        ctx = jnp.einsum("bnk,bnc->bkc", ek, xf.astype(jnp.float32)) @ w_v  # (b, hidden, hidden)
        if self.num_mem_kv:
            em = jnp.exp(mk[None] - k_max[:, None, :])  # (b, M, hidden)
            ctx = ctx + jnp.einsum("bmk,ml->bkl", em, mv)
            denom = denom + em.sum(axis=1)
        same_head = np.kron(np.eye(heads, dtype=np.float32), np.ones((d, d), np.float32))
        ctx = ctx * (same_head / denom[:, :, None])
        w_out, b_out = _Conv1x1Params(c, name="to_out_0")(hidden)
        y = jnp.einsum("bnk,bkc->bnc", q.astype(self.dtype), (ctx @ w_out).astype(self.dtype))
        y = (y + b_out.astype(self.dtype)).reshape(b, hh, ww, c)
        return RMSNorm(name="to_out_1")(y)


class Attention(nn.Module):
    """Full softmax attention over all positions, scale ``dim_head ** -0.5``, RMSNorm pre-norm."""

    heads: int
    dim_head: int
    num_mem_kv: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, hh, ww, c = x.shape
        hidden = self.heads * self.dim_head
        x = RMSNorm(name="norm")(x)
        qkv = _conv(hidden * 3, 1, self.dtype, "to_qkv", use_bias=False)(x)
        q, k, v = (_heads_split(a, self.heads) for a in jnp.split(qkv, 3, axis=-1))
        if self.num_mem_kv:
            # torch layout (2, heads, n, dim_head).
            mem = self.param("mem_kv", nn.initializers.normal(1.0), (2, self.heads, self.num_mem_kv, self.dim_head),
                             jnp.float32)
            mk, mv = (jnp.broadcast_to(jnp.transpose(m, (1, 0, 2))[None], (b, self.num_mem_kv, self.heads, self.dim_head))
                      .astype(q.dtype) for m in mem)
            k = jnp.concatenate([mk, k], axis=1)
            v = jnp.concatenate([mv, v], axis=1)
        sim = jnp.einsum("bihd,bjhd->bhij", q, k).astype(jnp.float32) * (self.dim_head ** -0.5)
        attn = jax.nn.softmax(sim, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, hh, ww, hidden)
        return _conv(c, 1, self.dtype, "to_out")(out)


def _downsample_rearrange(x: jax.Array) -> jax.Array:
    """``b c (h p1) (w p2) -> b (c p1 p2) h w`` in NHWC: new channel index = c*4 + p1*2 + p2."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return jnp.transpose(x, (0, 1, 3, 5, 2, 4)).reshape(b, h // 2, w // 2, c * 4)


def _upsample_nearest(x: jax.Array) -> jax.Array:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def sinusoidal_embedding(t: jax.Array, dim: int, theta: float = 10000.0) -> jax.Array:
    """(B,) -> (B, dim): ``[sin, cos]`` of t * exp(-i log(theta) / (half - 1)), float32."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(theta) / (half - 1)))
    arg = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


class RandomOrLearnedSinusoidalPosEmb(nn.Module):
    """(B,) -> (B, dim + 1): ``[t, sin(2 pi t w), cos(2 pi t w)]`` with ``weights`` w of shape (dim // 2,).

    With ``random_fourier_features`` PyTorch freezes ``weights``; the caller masks its gradient.
    """

    dim: int

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        w = self.param("weights", nn.initializers.normal(1.0), (self.dim // 2,), jnp.float32)
        tf = t.astype(jnp.float32)[:, None]
        freqs = tf * w[None, :] * 2 * math.pi
        return jnp.concatenate([tf, jnp.sin(freqs), jnp.cos(freqs)], axis=-1)


def downsample_factor(num_stages: int) -> int:
    return 2 ** (num_stages - 1)


def check_input_shape(shape: Sequence[int], model_cfg: ModelConfig) -> None:
    """Raises ``ValueError`` naming the size and the rule when the U-Net cannot take ``shape``."""
    if len(shape) != 4:
        raise ValueError(f"Unet input must be NHWC (batch, height, width, channels); got shape {tuple(shape)}")
    _, h, w, c = shape
    if c != model_cfg.channels:
        raise ValueError(f"Unet input has {c} channels but the model was built for channels={model_cfg.channels} "
                         f"(shape {tuple(shape)}, NHWC)")
    f = downsample_factor(model_cfg.num_stages)
    if h % f or w % f or h == 0 or w == 0:
        raise ValueError(f"Unet input size {h}x{w} is not divisible by {f} = 2**(num_stages-1) for "
                         f"dim_mults={tuple(model_cfg.dim_mults)}; use a patch size that is a multiple of {f}")


def _check_config(cfg: ModelConfig) -> None:
    dims = [cfg.init_dim or cfg.dim] + [cfg.dim * m for m in cfg.dim_mults]
    if cfg.version == "v1":
        if cfg.init_dim not in (None, cfg.dim):
            # 1.8.x builds final_res_block(dim * 2, dim): the skip from init_conv must have width dim.
            raise ValueError(f"version 'v1' (lucidrains 1.8.x) needs init_dim == dim, got init_dim={cfg.init_dim}, "
                             f"dim={cfg.dim}")
        bad = [d for d in dims if d % cfg.resnet_block_groups]
        if bad:
            raise ValueError(f"version 'v1' uses GroupNorm({cfg.resnet_block_groups}): every width must be divisible "
                             f"by resnet_block_groups, but widths {sorted(set(bad))} are not (dim={cfg.dim}, "
                             f"dim_mults={tuple(cfg.dim_mults)})")
    if (cfg.learned_sinusoidal_cond or cfg.random_fourier_features) and cfg.learned_sinusoidal_dim % 2:
        raise ValueError(f"learned_sinusoidal_dim must be even, got {cfg.learned_sinusoidal_dim}")
    if not (cfg.learned_sinusoidal_cond or cfg.random_fourier_features) and cfg.dim < 4:
        raise ValueError(f"dim must be >= 4 for the sinusoidal time embedding, got {cfg.dim}")


class Unet(nn.Module):
    """The lucidrains U-Net; ``__call__(x (B,H,W,C), t (B,) int, x_self_cond=None) -> (B,H,W,out_dim)`` float32."""

    cfg: ModelConfig

    @classmethod
    def from_config(cls, model_cfg: ModelConfig) -> "Unet":
        _check_config(model_cfg)
        return cls(model_cfg)

    @property
    def out_channels(self) -> int:
        c = self.cfg
        return c.out_dim if c.out_dim is not None else c.channels * (2 if c.learned_variance else 1)

    @nn.compact
    def __call__(self, x: jax.Array, time: jax.Array, x_self_cond: Optional[jax.Array] = None) -> jax.Array:
        cfg = self.cfg
        check_input_shape(x.shape, cfg)
        if time.ndim != 1 or time.shape[0] != x.shape[0]:
            raise ValueError(f"Unet time must have shape (batch,) = ({x.shape[0]},); got {tuple(time.shape)}")
        dtype = _DTYPES[cfg.dtype]
        v1 = cfg.version == "v1"
        mem = 0 if v1 else cfg.num_mem_kv
        init_dim = cfg.init_dim or cfg.dim
        dims = [init_dim] + [cfg.dim * m for m in cfg.dim_mults]
        in_out = list(zip(dims[:-1], dims[1:]))
        full_attn = cfg.full_attn_per_stage
        time_dim = cfg.dim * 4
        resnet = lambda d, name: ResnetBlock(d, cfg.version, cfg.resnet_block_groups, dtype, name=name)  # noqa: E731

        def attention(full: bool, name: str) -> nn.Module:
            klass = Attention if full else LinearAttention
            return klass(cfg.attn_heads, cfg.attn_dim_head, mem, dtype, name=name)

        if cfg.self_condition:
            cond = jnp.zeros_like(x) if x_self_cond is None else x_self_cond
            x = jnp.concatenate([cond, x], axis=-1)
        x = _conv(init_dim, 7, dtype, "init_conv")(x.astype(dtype))
        r = x

        # time embedding: sinusoidal (or random/learned Fourier) -> Linear -> exact GELU -> Linear
        if cfg.learned_sinusoidal_cond or cfg.random_fourier_features:
            emb = RandomOrLearnedSinusoidalPosEmb(cfg.learned_sinusoidal_dim, name="time_mlp_0")(time)
        else:
            emb = sinusoidal_embedding(time, cfg.dim, cfg.sinusoidal_pos_emb_theta)
        dense = lambda n, name: nn.Dense(n, dtype=dtype, param_dtype=jnp.float32, name=name)  # noqa: E731
        t = dense(time_dim, "time_mlp_1")(emb)
        t = nn.gelu(t, approximate=False)
        t = dense(time_dim, "time_mlp_3")(t)

        hs = []
        for i, ((d_in, d_out), full) in enumerate(zip(in_out, full_attn)):
            last = i == len(in_out) - 1
            x = resnet(d_in, f"downs_{i}_0")(x, t)
            hs.append(x)
            x = resnet(d_in, f"downs_{i}_1")(x, t)
            x = attention(full, f"downs_{i}_2")(x) + x
            hs.append(x)
            if last:
                x = _conv(d_out, 3, dtype, f"downs_{i}_3")(x)
            else:
                x = _conv(d_out, 1, dtype, f"downs_{i}_3_1")(_downsample_rearrange(x))

        mid = dims[-1]
        x = resnet(mid, "mid_block1")(x, t)
        x = attention(True, "mid_attn")(x) + x
        x = resnet(mid, "mid_block2")(x, t)

        for i, ((d_in, d_out), full) in enumerate(zip(reversed(in_out), reversed(full_attn))):
            last = i == len(in_out) - 1
            x = resnet(d_out, f"ups_{i}_0")(jnp.concatenate([x, hs.pop()], axis=-1), t)
            x = resnet(d_out, f"ups_{i}_1")(jnp.concatenate([x, hs.pop()], axis=-1), t)
            x = attention(full, f"ups_{i}_2")(x) + x
            if last:
                x = _conv(d_in, 3, dtype, f"ups_{i}_3")(x)
            else:
                x = _conv(d_in, 3, dtype, f"ups_{i}_3_1")(_upsample_nearest(x))

        x = jnp.concatenate([x, r], axis=-1)
        # 1.8.x: final_res_block(dim * 2, dim); 2.x: (init_dim * 2, init_dim) -- equal when init_dim == dim.
        x = resnet(cfg.dim if v1 else init_dim, "final_res_block")(x, t)
        x = _conv(self.out_channels, 1, dtype, "final_conv")(x)
        return x.astype(jnp.float32)


@functools.lru_cache(maxsize=64)
def abstract_params(model_cfg: ModelConfig) -> dict:
    """The parameter tree of ``Unet.from_config(model_cfg)`` as ``jax.ShapeDtypeStruct`` leaves (no compile).

    Parameter shapes do not depend on the image size, so this traces the smallest valid input.
    """
    f = downsample_factor(model_cfg.num_stages)
    x = jax.ShapeDtypeStruct((1, f, f, model_cfg.channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    return jax.eval_shape(Unet.from_config(model_cfg).init, jax.random.PRNGKey(0), x, t)["params"]


def init_params(model_cfg: ModelConfig, image_size: int, key: jax.Array) -> dict:
    """Float32 parameters for ``Unet.from_config(model_cfg)`` on (1, image_size, image_size, channels) inputs."""
    model = Unet.from_config(model_cfg)
    x = jnp.zeros((1, image_size, image_size, model_cfg.channels), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    return jax.jit(model.init)(key, x, t)["params"]
