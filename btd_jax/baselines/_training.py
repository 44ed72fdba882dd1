"""The training loop and batched inference shared by every neural baseline.

One loop for all of them: each baseline supplies only its loss ``loss_fn(params, batch, key)``
(``batch`` is (B,H,W,1) float32 in [0,1]); the loop owns Adam, gradient clipping, batching and the
jitted step. Batches are drawn on the host (epoch-wise permutations) so a large training set never
has to sit on the device.
"""

from __future__ import annotations

from typing import Any, Callable, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from btd_jax.baselines import base
from btd_jax.baselines._nets import squared_error

__all__ = ["as_key", "fit_reconstruction", "batched_apply", "reconstruction_scorer"]

LossFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def as_key(key: Any) -> jax.Array:
    """``None`` -> PRNGKey(0); an int -> PRNGKey(int); a key passes through."""
    if key is None:
        return jax.random.PRNGKey(0)
    if isinstance(key, (int, np.integer)):
        return jax.random.PRNGKey(int(key))
    return key


def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless epoch-wise permutations of range(n), in batches of ``min(batch_size, n)``."""
    b = min(batch_size, n)
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - b + 1, b):
            yield perm[i:i + b]


def fit_reconstruction(loss_fn: LossFn, params: Any, data: np.ndarray, *, steps: int, batch_size: int,
                       learning_rate: float, key: jax.Array, max_grad_norm: float = 1.0,
                       weight_decay: float = 0.0) -> Tuple[Any, np.ndarray]:
    """Minimises ``loss_fn`` over random batches of ``data`` (N,H,W) with Adam.

    Returns ``(params, losses)`` where ``losses`` is the (steps,) training-loss curve. Deterministic
    for a given ``key``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    tx = optax.chain(optax.clip_by_global_norm(max_grad_norm),
                     optax.adamw(learning_rate, weight_decay=weight_decay) if weight_decay
                     else optax.adam(learning_rate))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    key, seed_key = jax.random.split(key)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(seed_key)).ravel().tolist())
    x = np.asarray(data, np.float32)[..., None]
    losses = []
    for i, idx in zip(range(steps), _batches(len(x), batch_size, rng)):
        params, opt_state, loss = step(params, opt_state, jnp.asarray(x[idx]), jax.random.fold_in(key, i))
        losses.append(loss)
    return params, np.asarray(jax.device_get(losses), np.float64)


def batched_apply(fn: Callable[[jax.Array, jax.Array], jax.Array], patches: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """Applies jitted ``fn(batch (B,H,W,1), index (B,) int32) -> (B, ...)`` to all ``patches`` (N,H,W).

    ``index`` holds each row's position in ``patches``, so per-patch randomness can be keyed on it
    and does not depend on how the data is split into batches. The last batch is padded to the
    same shape (one trace for any N) and the padding dropped.
    """
    x = np.asarray(patches, np.float32)[..., None]
    n = len(x)
    b = min(batch_size, n)
    jfn = jax.jit(fn)
    out = []
    for i in range(0, n, b):
        chunk = x[i:i + b]
        m = len(chunk)
        idx = np.minimum(np.arange(i, i + b), n - 1).astype(np.int32)
        if m < b:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - m, axis=0)])
        out.append(np.asarray(jfn(jnp.asarray(chunk), jnp.asarray(idx)))[:m])
    return np.concatenate(out)


def reconstruction_scorer(make_model: Callable[[Any, int], Any]) -> Callable[..., np.ndarray]:
    """``score(state, patches, center=None, batch_size=256) -> (N,)`` for an autoencoder baseline.

    The score is the mean squared reconstruction error over the patch or its central ``center``
    window; ``state.arrays`` holds ``params`` and ``side``; ``make_model(config, side)`` builds the
    Flax module.
    """
    def score(state: Any, patches: np.ndarray, center: Any = None, batch_size: int = 256) -> np.ndarray:
        side = int(state.arrays["side"])
        x = base.check_patches(patches, side=side)
        model, params = make_model(state.config, side), state.arrays["params"]

        def fn(batch, _index):
            return base.window_mean(squared_error(model.apply({"params": params}, batch), batch), center)

        return batched_apply(fn, x, batch_size).astype(np.float64)

    return score
