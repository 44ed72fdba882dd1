"""PyTorch (lucidrains denoising-diffusion-pytorch) checkpoints <-> Flax parameters.

The Flax ``Unet`` names its submodules after the PyTorch keys with every ``.<digits>`` folded into the
previous name (``downs.0.2.to_out.0.weight`` <-> ``downs_0_2/to_out_0/kernel``), so the conversion is a
table: conv kernels OIHW <-> HWIO, linear weights transposed, GroupNorm ``weight`` <-> ``scale``, RMSNorm
``g`` (1, C, 1, 1) <-> (C,). Everything about the architecture is read from the keys and shapes; the
diffusion schedule is rebuilt from the stored buffers' timestep count and checked against them.

Torch is imported only by :func:`load_torch_checkpoint`; everything else works on NumPy arrays.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
from flax import traverse_util

from btd_jax import configs, diffusion
from btd_jax.configs import Config, DiffusionConfig, ModelConfig
from btd_jax.data.validate import load_npz
from btd_jax.models.unet import abstract_params

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "load_torch_checkpoint", "load_npz_state_dict",
           "infer_model_config",
           "match_schedule", "torch_key_to_flax_path", "flax_path_to_torch_key", "SCHEDULE_BUFFERS"]

log = logging.getLogger(__name__)

# lucidrains GaussianDiffusion buffers, in registration order.
SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "loss_weight",
)
_MODEL_PREFIX = "model."
# float32 buffers computed in float64 by torch vs NumPy agree to a few ulp.
_SCHED_RTOL, _SCHED_ATOL = 1e-5, 1e-7


# ---------------------------------------------------------------------------------------- naming

def torch_key_to_flax_path(key: str) -> Tuple[str, ...]:
    """``'downs.0.0.block1.proj.weight'`` -> ``('downs_0_0', 'block1', 'proj', 'weight')`` (leaf still torch's)."""
    return tuple(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", key).split("."))


def flax_path_to_torch_key(path: Tuple[str, ...]) -> str:
    """Inverse of :func:`torch_key_to_flax_path`: ``_<digits>`` at a name boundary becomes ``.<digits>``."""
    return re.sub(r"_(\d+)(?=\.|_|$)", r".\1", ".".join(path))


def _leaf_to_flax(leaf: str, a: np.ndarray) -> Tuple[str, np.ndarray]:
    if leaf == "weight":
        if a.ndim == 4:  # conv OIHW -> HWIO
            return "kernel", np.transpose(a, (2, 3, 1, 0))
        if a.ndim == 2:  # linear (out, in) -> (in, out)
            return "kernel", a.T
        return "scale", a  # GroupNorm gain
    if leaf == "g":  # RMSNorm gain (1, C, 1, 1)
        return "g", a.reshape(-1)
    return leaf, a  # bias, mem_kv (kept in torch layout), weights (learned sinusoidal)


def _leaf_to_torch(leaf: str, a: np.ndarray) -> Tuple[str, np.ndarray]:
    if leaf == "kernel":
        return "weight", (np.transpose(a, (3, 2, 0, 1)) if a.ndim == 4 else a.T)
    if leaf == "scale":
        return "weight", a
    if leaf == "g":
        return "g", a.reshape(1, -1, 1, 1)
    return leaf, a


def _torch_key(path: Tuple[str, ...]) -> str:
    leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
    return flax_path_to_torch_key((*path[:-1], leaf))


def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; torch itself is not imported here
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        v = v.numpy()
    a = np.asarray(v)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


# ---------------------------------------------------------------------------------------- architecture

def _layout_error(problem: str, keys) -> ValueError:
    some = ", ".join(sorted(keys)[:8]) + (", ..." if len(keys) > 8 else "")
    return ValueError(f"not a lucidrains Unet state dict: {problem} (it has {len(keys)} keys: {some})")


def infer_model_config(unet_sd: Mapping[str, np.ndarray], base: Optional[ModelConfig] = None) -> ModelConfig:
    """Reads the U-Net hyper-parameters from the keys/shapes of a bare Unet state dict (no ``model.``).

    Not recoverable from shapes (taken from ``base``): ``resnet_block_groups`` (v1), the sinusoidal theta,
    ``dtype``, and how v1 splits the attention width into heads: ``base``'s heads x dim_head when the product
    matches the stored width, else 4 heads as 1.8.x hard-codes. A checkpoint whose input has twice as many
    channels as its output is read as ``self_condition``, one whose output has twice as many as
    ``learned_variance``; pass ``base`` fields to be explicit about anything else.
    """
    base = base or ModelConfig()
    keys = set(unet_sd)
    for k in ("init_conv.weight", "time_mlp.1.weight", "final_conv.weight", "mid_attn.to_qkv.weight"):
        if k not in keys:
            raise _layout_error(f"missing key {k!r}", keys)
    stages = sorted({int(m.group(1)) for k in keys if (m := re.match(r"downs\.(\d+)\.", k))})
    if not stages or stages != list(range(len(stages))):
        raise _layout_error(f"downs.* stages must be numbered 0..n-1, found {stages}", keys)
    has_mem = any(k.endswith(".mem_kv") for k in keys)
    if "downs.0.0.block1.norm.weight" in keys and not has_mem:
        version = "v1"
    elif "downs.0.0.block1.norm.g" in keys and has_mem:
        version = "v2"
    else:
        raise _layout_error("cannot tell the generation: expected GroupNorm Blocks without mem_kv (1.8.x) or "
                            "RMSNorm Blocks with mem_kv (2.x)", keys)

    init_dim, in_ch = unet_sd["init_conv.weight"].shape[:2]
    time_dim = unet_sd["time_mlp.1.weight"].shape[0]
    if time_dim % 4:
        raise _layout_error(f"time_mlp.1 width {time_dim} is not 4 * dim", keys)
    dim = time_dim // 4
    mults = []
    for i in stages:
        w = unet_sd.get(f"downs.{i}.3.1.weight", unet_sd.get(f"downs.{i}.3.weight"))
        if w is None or w.shape[0] % dim:
            raise _layout_error(f"stage {i} has no downsample conv of a width divisible by dim={dim}", keys)
        mults.append(w.shape[0] // dim)
    full_attn = tuple(f"downs.{i}.2.to_out.weight" in keys for i in stages)

    if version == "v2":
        _, heads, num_mem, dim_head = unet_sd["mid_attn.mem_kv"].shape
    else:
        hidden, num_mem = unet_sd["mid_attn.to_qkv.weight"].shape[0] // 3, base.num_mem_kv
        if base.attn_heads * base.attn_dim_head == hidden:
            heads, dim_head = base.attn_heads, base.attn_dim_head  # e.g. a v1 model trained here with 2 x 8
        else:
            heads, dim_head = 4, hidden // 4  # 1.8.x: Attention(dim) with the default heads=4
    for k in keys:
        if k.endswith(".to_qkv.weight") and unet_sd[k].shape[0] != 3 * heads * dim_head:
            raise ValueError(f"{k} has {unet_sd[k].shape[0] // 3} hidden channels but mid_attn has {heads} x "
                             f"{dim_head}; per-stage attention heads are not supported")

    out_dim = unet_sd["final_conv.weight"].shape[0]
    self_condition, learned_variance, channels, explicit_out = False, False, in_ch, None
    if in_ch == 2 * out_dim:
        self_condition, channels = True, out_dim
    elif out_dim == 2 * in_ch:
        learned_variance = True
    elif out_dim != in_ch:
        explicit_out = out_dim
    learned = "time_mlp.0.weights" in keys
    default_attn = (False,) * (len(stages) - 1) + (True,)
    return dataclasses.replace(
        base, version=version, dim=dim, init_dim=None if init_dim == dim else init_dim, out_dim=explicit_out,
        dim_mults=tuple(mults), channels=channels, self_condition=self_condition, learned_variance=learned_variance,
        learned_sinusoidal_cond=learned, random_fourier_features=False,
        learned_sinusoidal_dim=2 * unet_sd["time_mlp.0.weights"].shape[0] if learned else base.learned_sinusoidal_dim,
        attn_heads=heads, attn_dim_head=dim_head, num_mem_kv=num_mem,
        full_attn=None if full_attn == default_attn else full_attn)


def _expected_shapes(model_cfg: ModelConfig) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
    flat = traverse_util.flatten_dict(abstract_params(model_cfg))
    return {p: tuple(s.shape) for p, s in flat.items()}


def _unet_to_flax(unet_sd: Mapping[str, np.ndarray], model_cfg: ModelConfig, prefix: str) -> dict:
    expected = _expected_shapes(model_cfg)
    flat = {}
    for key, a in unet_sd.items():
        *mods, leaf = torch_key_to_flax_path(key)
        name, arr = _leaf_to_flax(leaf, a)
        flat[(*mods, name)] = (key, np.ascontiguousarray(arr, dtype=np.float32))
    missing = sorted(prefix + _torch_key(p) for p in expected if p not in flat)
    unexpected = sorted(prefix + flat[p][0] for p in flat if p not in expected)
    if missing or unexpected:
        raise ValueError(f"state dict does not match a lucidrains {model_cfg.version} Unet with dim={model_cfg.dim}, "
                         f"dim_mults={tuple(model_cfg.dim_mults)}: missing keys {missing}; unexpected keys {unexpected}")
    for p, (key, arr) in flat.items():
        if arr.shape != expected[p]:
            raise ValueError(f"{prefix}{key}: shape {unet_sd[key].shape} converts to {arr.shape} but the inferred "
                             f"architecture needs {expected[p]}")
    return traverse_util.unflatten_dict({p: arr for p, (_, arr) in flat.items()})


# ---------------------------------------------------------------------------------------- schedule

def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=_SCHED_RTOL, atol=_SCHED_ATOL))


def match_schedule(buffers: Mapping[str, np.ndarray], base: Optional[DiffusionConfig] = None) -> DiffusionConfig:
    """The :class:`DiffusionConfig` whose schedule reproduces the stored lucidrains buffers.

    Tries ``base``'s schedule (with its ``schedule_kwargs``) and then linear, cosine and sigmoid with their
    defaults at the stored number of timesteps; the objective (and min-SNR weighting, at ``base``'s gamma)
    is read from ``loss_weight``. Raises ``ValueError`` naming the buffer that no candidate reproduces.
    """
    base = base or DiffusionConfig()
    missing = [k for k in SCHEDULE_BUFFERS if k not in buffers]
    if missing:
        raise ValueError(f"schedule buffers incomplete: missing {missing}")
    stored = {k: np.asarray(buffers[k], np.float32) for k in SCHEDULE_BUFFERS}
    timesteps = int(stored["betas"].shape[0])
    sampling = min(base.sampling_timesteps, timesteps)
    candidates = [(base.beta_schedule, base.schedule_kwargs)] + [(n, ()) for n in ("sigmoid", "linear", "cosine")]
    independent = [k for k in SCHEDULE_BUFFERS if k != "loss_weight"]
    errors = []
    for name, kwargs in dict.fromkeys(candidates):
        try:
            cand = dataclasses.replace(base, timesteps=timesteps, sampling_timesteps=sampling, beta_schedule=name,
                                       schedule_kwargs=kwargs, objective="pred_noise", min_snr_loss_weight=False)
            ours = diffusion.make_schedule(cand).buffers()
        except ValueError as e:  # e.g. linear with too few steps
            errors.append(f"{name}: {e}")
            continue
        bad = [k for k in independent if not _close(stored[k], ours[k])]
        if bad:
            err = np.max(np.abs(stored[bad[0]] - ours[bad[0]]))
            errors.append(f"{name}{dict(kwargs) or ''}: {bad[0]} differs by up to {err:.3g}")
            continue
        for objective in (base.objective,) + tuple(o for o in configs.OBJECTIVES if o != base.objective):
            for min_snr in (False, True):
                c = dataclasses.replace(cand, objective=objective, min_snr_loss_weight=min_snr)
                if _close(stored["loss_weight"], diffusion.make_schedule(c).buffers()["loss_weight"]):
                    log.info("schedule buffers match beta_schedule=%r%s, timesteps=%d, objective=%r, "
                             "min_snr_loss_weight=%s", name, dict(kwargs) or "", timesteps, objective, min_snr)
                    return c
        raise ValueError(f"the {name} schedule ({timesteps} steps) matches the stored betas but loss_weight matches no "
                         f"objective in {configs.OBJECTIVES} (min-SNR gamma tried: {base.min_snr_gamma})")
    raise ValueError(f"stored betas ({timesteps} timesteps) match no known beta schedule: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------- public API

def _split_state_dict(sd: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray], str]:
    """(bare Unet dict, schedule buffers, prefix) from a GaussianDiffusion, EMA-wrapper or bare Unet dict."""
    if any(k.startswith("ema_model.") for k in sd):  # an ema_pytorch EMA state dict
        sd = {k[len("ema_model."):]: v for k, v in sd.items() if k.startswith("ema_model.")}
    if any(k.startswith(_MODEL_PREFIX) for k in sd):
        unet = {k[len(_MODEL_PREFIX):]: v for k, v in sd.items() if k.startswith(_MODEL_PREFIX)}
        buffers = {k: v for k, v in sd.items() if k in SCHEDULE_BUFFERS}
        other = sorted(k for k in sd if not k.startswith(_MODEL_PREFIX) and k not in SCHEDULE_BUFFERS)
        if other:
            raise ValueError(f"state dict has unexpected keys {other} beside the model.* weights and schedule buffers")
        return unet, buffers, _MODEL_PREFIX
    return dict(sd), {}, ""


def from_torch_state_dict(state_dict: Mapping[str, Any], base: Optional[Config] = None,
                          **model_overrides: Any) -> Tuple[dict, Config]:
    """Flax params and a :class:`Config` from a lucidrains state dict (NumPy arrays or torch tensors).

    Args:
      state_dict: ``GaussianDiffusion.state_dict()`` (``model.*`` + schedule buffers), an ``EMA`` wrapper's
        state dict (``ema_model.*`` is used) or a bare ``Unet.state_dict()``.
      base: settings that the weights don't determine (name, modality, image size, training, scoring and
        the diffusion defaults for a bare U-Net); default ``configs.get('ct')``.
      **model_overrides: ``ModelConfig`` fields applied after inference (e.g. ``resnet_block_groups=4``).
    Returns:
      (params, cfg): float32 NumPy parameter tree for ``Unet.from_config(cfg.model)``, and the config with the
      inferred architecture and, when buffers are present, the matched schedule (see :func:`match_schedule`).
    """
    base = base or configs.get("ct")
    sd = {k: _to_numpy(v) for k, v in state_dict.items()}
    unet_sd, buffers, prefix = _split_state_dict(sd)
    model_cfg = infer_model_config(unet_sd, base.model)
    if model_overrides:
        model_cfg = dataclasses.replace(model_cfg, **model_overrides)
    params = _unet_to_flax(unet_sd, model_cfg, prefix)
    if buffers:
        diff_cfg = match_schedule(buffers, base.diffusion)
    else:
        diff_cfg = base.diffusion
        log.warning("no schedule buffers in the state dict (a bare Unet); keeping %s schedule, %d steps, %s",
                    diff_cfg.beta_schedule, diff_cfg.timesteps, diff_cfg.objective)
    log.info("converted lucidrains %s Unet: dim=%d dim_mults=%s channels=%d heads=%dx%d full_attn=%s",
             model_cfg.version, model_cfg.dim, model_cfg.dim_mults, model_cfg.channels, model_cfg.attn_heads,
             model_cfg.attn_dim_head, model_cfg.full_attn_per_stage)
    return params, dataclasses.replace(base, model=model_cfg, diffusion=diff_cfg)


def to_torch_state_dict(params: Any, cfg: Config, include_schedule: bool = True) -> Dict[str, np.ndarray]:
    """The reverse of :func:`from_torch_state_dict`: a ``GaussianDiffusion`` state dict of float32 NumPy arrays.

    Keys ``model.*`` plus, with ``include_schedule``, the 13 schedule buffers of ``cfg.diffusion`` (so that
    ``GaussianDiffusion.load_state_dict({k: torch.from_numpy(v) ...})`` works).
    """
    sd = {}
    for path, a in traverse_util.flatten_dict(jax.device_get(params)).items():
        sd[_MODEL_PREFIX + _torch_key(path)] = _leaf_to_torch(path[-1], np.asarray(a, np.float32))[1]
    if include_schedule:
        sd.update(diffusion.make_schedule(cfg.diffusion).buffers())
    # writable, contiguous copies: torch.from_numpy warns on the read-only views of device arrays
    return {k: np.array(v, np.float32, order="C", copy=True) for k, v in sd.items()}


def load_torch_checkpoint(path: str, which: str = "model", base: Optional[Config] = None,
                          **model_overrides: Any) -> Tuple[dict, Config]:
    """Reads a lucidrains checkpoint with ``torch.load(weights_only=True)`` and converts it.

    Accepts the Trainer layout ``{'model': GaussianDiffusion state dict, 'ema': EMA state dict, ...}``
    (the BTD authors' files) and a bare state dict. ``which='ema'`` picks the EMA weights
    (``ema['ema_model.*']``). Needs torch (``pip install 'btd_jax[torch]'``).
    """
    if which not in ("model", "ema"):
        raise ValueError(f"which must be 'model' or 'ema', got {which!r}")
    import os

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path}: reading a PyTorch checkpoint needs torch (pip install 'btd_jax[torch]'), "
                          "or save the state dict as .npz") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors: one clear line
        raise ValueError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("model"), Mapping):  # Trainer.save layout
        if which == "ema":
            if not isinstance(obj.get("ema"), Mapping):
                raise ValueError(f"{path}: has no 'ema' entry (keys: {sorted(obj)})")
            sd = obj["ema"]
        else:
            sd = obj["model"]
    else:
        sd = obj
    has_ema = any(k.startswith("ema_model.") for k in sd)
    if which == "ema" and not has_ema:
        raise ValueError(f"{path}: which='ema' but the state dict has no ema_model.* keys")
    if which == "model" and has_ema:
        # a bare EMA wrapper dict: its online copy is the 'model'
        sd = {k[len("online_model."):]: v for k, v in sd.items() if k.startswith("online_model.")}
        if not sd:
            raise ValueError(f"{path}: an EMA state dict without online_model.* keys; use which='ema'")
    log.info("%s: loading %s weights", path, which)
    return from_torch_state_dict(sd, base, **model_overrides)


def load_npz_state_dict(path: str) -> Dict[str, np.ndarray]:
    """A state dict saved torch-free as ``.npz`` (keys = state-dict names, or ``sd/<name>`` as in the parity
    fixtures, whose other arrays are ignored)."""
    sd = load_npz(path)
    if any(k.startswith("sd/") for k in sd):
        sd = {k[3:]: v for k, v in sd.items() if k.startswith("sd/")}
    return sd
