"""Training: loss falls, EMA = ema_pytorch, accumulation = large batch, device-count invariance, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from btd_jax import configs, parallel, train
from btd_jax.data.errors import DataError
from btd_jax.train import feed
from btd_jax.train.step import step_noise

# One config for most tests, so the compiled step is shared (loop-only fields do not recompile).
CFG = configs.override(configs.get("tiny"), {
    "train.batch_size": 8, "train.grad_accum": 1, "train.num_steps": 6, "train.log_every": 2,
    "train.eval_every": 3, "train.checkpoint_every": 3, "train.keep_checkpoints": 2})


def _data(n=24, seed=0):
    """Smooth random patches in [0, 1] (learnable, unlike white noise)."""
    rng = np.random.default_rng(seed)
    base = rng.random((n, 4, 4), dtype=np.float32)
    return np.kron(base, np.ones((4, 4), np.float32))


def _max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- EMA ---------------------------------------------------------------------------------------------


class NumpyEMA:
    """Line-by-line NumPy port of ``ema_pytorch.EMA.update`` (0.8.x), float32 like torch buffers."""

    def __init__(self, params, beta, update_after_step, update_every, inv_gamma, power):
        self.ema = {k: v.copy() for k, v in params.items()}
        self.beta, self.after, self.every = beta, update_after_step, update_every
        self.inv_gamma, self.power = inv_gamma, power
        self.step, self.initted = 0, False

    def decay(self):
        epoch = np.float32(max(self.step - self.after - 1, 0))
        value = np.float32(1) - (np.float32(1) + epoch / np.float32(self.inv_gamma)) ** np.float32(-self.power)
        if epoch <= 0:
            return 0.0
        return float(np.clip(value, 0.0, self.beta))

    def update(self, params):
        step = self.step
        self.step += 1
        if not self.initted:
            self.ema = {k: v.copy() for k, v in params.items()}
            self.initted = True
            return
        should = step % self.every == 0
        if should and step <= self.after:
            self.ema = {k: v.copy() for k, v in params.items()}
            return
        if should:
            w = np.float32(1.0 - self.decay())
            self.ema = {k: (e + w * (params[k] - e)).astype(np.float32) for k, e in self.ema.items()}


@pytest.mark.parametrize("after,every", [(100, 10), (15, 3), (0, 1)])
def test_ema_matches_ema_pytorch(after, every):
    tc = configs.TrainConfig(ema_decay=0.995, ema_update_after_step=after, ema_update_every=every)
    rng = np.random.default_rng(1)
    p0 = {"w": rng.standard_normal((5, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32)}
    ref = NumpyEMA(p0, 0.995, after, every, 1.0, 2 / 3)
    ema = jax.tree.map(jnp.asarray, p0)
    update = jax.jit(lambda e, p, s: train.ema_update(e, p, s, tc))
    params = p0
    for step in range(160):
        params = {k: v + 0.1 * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        ref.update(params)
        ema = update(ema, params, jnp.int32(step))
        for k in params:
            np.testing.assert_allclose(np.asarray(ema[k]), ref.ema[k], rtol=1e-6, atol=1e-6, err_msg=f"step {step}")


def test_ema_decay_warmup_values():
    tc = configs.TrainConfig()  # beta 0.995, after 100, inv_gamma 1, power 2/3
    d = jax.jit(lambda s: train.ema_decay(s, tc))
    assert float(d(100)) == 0.0
    np.testing.assert_allclose(float(d(110)), 1 - 11 ** (-2 / 3), rtol=1e-6)
    np.testing.assert_allclose(float(d(10_000)), 0.995, rtol=1e-7)


# --- optimiser --------------------------------------------------------------------------------------


def test_learning_rate_schedules():
    tc = configs.TrainConfig(learning_rate=1e-3, warmup_steps=10, lr_schedule="cosine", num_steps=110)
    lr = train.learning_rate_schedule(tc)
    np.testing.assert_allclose([float(lr(0)), float(lr(5)), float(lr(10)), float(lr(60)), float(lr(110))],
                               [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)
    const = train.learning_rate_schedule(configs.TrainConfig())
    assert float(const(0)) == float(const(10**6)) == pytest.approx(8e-6)


def test_optimizer_is_clip_then_adam():
    tc = configs.TrainConfig(learning_rate=0.1, max_grad_norm=1.0, adam_betas=(0.9, 0.99))
    tx = train.make_optimizer(tc)
    params = {"w": jnp.zeros(2)}
    grads = {"w": jnp.array([30.0, 40.0])}  # norm 50 -> clipped to (0.6, 0.8)
    updates, _ = tx.update(grads, tx.init(params), params)
    # Adam's first step is lr * g / (|g| + eps) whatever the scale, so check the clipped direction too.
    np.testing.assert_allclose(np.asarray(updates["w"]), [-0.1, -0.1], rtol=1e-6)
    import optax
    clipped, _ = optax.clip_by_global_norm(1.0).update(grads, None)
    np.testing.assert_allclose(np.asarray(clipped["w"]), [0.6, 0.8], rtol=1e-6)


# --- steps ------------------------------------------------------------------------------------------


def test_loss_falls():
    mesh = parallel.make_mesh()
    state = train.create_train_state(CFG, jax.random.PRNGKey(0), mesh)
    x = jax.device_put(_data(8)[None, ..., None], train.batch_sharding(mesh))
    losses = []
    for _ in range(30):
        state, m = train.train_step(state, x, CFG, mesh)
        losses.append(float(m["loss"]))
    assert int(state.step) == 30
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses


def _flat(tree):
    return traverse_util.flatten_dict(tree, sep="/")


def _assert_same_training(a, b, lr, what):
    """Params/EMA of two states agree to rounding wherever the gradient is real.

    Conv biases in front of a one-channel-per-group GroupNorm have a zero gradient up to rounding
    (~1e-10); Adam divides it by sqrt(v) + 1e-8, so there the last bits of a different summation
    order show up at up to ~lr per step, as they would in PyTorch. Everything else must agree.
    """
    nu = _flat(a.opt_state[1][0].nu)
    assert sum(int(np.sum(np.sqrt(v) > 1e-7)) for v in nu.values()) > 0.9 * sum(v.size for v in nu.values())
    for field in ("params", "ema_params"):
        pa, pb = _flat(getattr(a, field)), _flat(getattr(b, field))
        for k in pa:
            real = np.sqrt(nu[k]) > 1e-7
            # Adam's m / sqrt(v) turns summation-order rounding into ~2e-5 on a few small-v elements.
            np.testing.assert_allclose(pa[k][real], pb[k][real], atol=5e-5, err_msg=f"{what} {field} {k}")
            assert np.max(np.abs(pa[k] - pb[k]), initial=0) <= 3 * lr, f"{what} {field} {k}"


def test_accumulation_equals_large_batch():
    mesh = parallel.make_mesh()
    x = _data(8)[..., None]
    big = train.create_train_state(CFG, jax.random.PRNGKey(0), mesh)
    big, m_big = train.train_step(big, jax.device_put(x[None], train.batch_sharding(mesh)), CFG, mesh)
    # 2 micro-batches of 4 (on 4 devices, as 4 rows do not split over 8) against one batch of 8
    cfg2 = configs.override(CFG, {"train.batch_size": 4, "train.grad_accum": 2})
    mesh4 = parallel.make_mesh(jax.devices()[:4])
    acc = train.create_train_state(cfg2, jax.random.PRNGKey(0), mesh4)
    acc, m_acc = train.train_step(acc, jax.device_put(x.reshape(2, 4, 16, 16, 1), train.batch_sharding(mesh4)),
                                  cfg2, mesh4)
    np.testing.assert_allclose(float(m_acc["loss"]), float(m_big["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m_acc["grad_norm"]), float(m_big["grad_norm"]), rtol=1e-5)
    _assert_same_training(jax.device_get(big), jax.device_get(acc), CFG.train.learning_rate, "accumulation")
    # the random inputs of (accum 2, batch 4) are those of (accum 1, batch 8), reshaped
    t1, n1, _ = step_noise(CFG, jax.random.PRNGKey(4), 1, 8)
    t2, n2, _ = step_noise(CFG, jax.random.PRNGKey(4), 2, 4)
    np.testing.assert_array_equal(np.asarray(t2).reshape(-1), np.asarray(t1).reshape(-1))
    np.testing.assert_array_equal(np.asarray(n2).reshape(8, -1), np.asarray(n1).reshape(8, -1))


def test_one_and_eight_devices_take_equal_steps():
    assert jax.device_count() == 8
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = parallel.make_mesh(devices)
        state = train.create_train_state(CFG, jax.random.PRNGKey(0), mesh)
        for s in range(3):
            x = jax.device_put(_data(8, seed=s)[None, ..., None], train.batch_sharding(mesh))
            state, m = train.train_step(state, x, CFG, mesh)
        out.append(jax.device_get(state))
    _assert_same_training(out[0], out[1], CFG.train.learning_rate, "1 vs 8 devices")


def test_bfloat16_compute_keeps_float32_params():
    mesh = parallel.make_mesh(jax.devices()[:1])  # the dtypes are under test here, not the sharding
    cfg = configs.override(CFG, {"model.dtype": "bfloat16"})
    x = jax.device_put(_data(8)[None, ..., None], train.batch_sharding(mesh))
    losses = {}
    for c in (CFG, cfg):
        state = train.create_train_state(c, jax.random.PRNGKey(0), mesh)
        state, m = train.train_step(state, x, c, mesh)
        losses[c.model.dtype] = float(m["loss"])
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves((state.params, state.ema_params)))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.05)


# --- data feed --------------------------------------------------------------------------------------


def test_data_order_is_a_pure_function_of_seed_and_step():
    a = [feed.global_indices(7, s, 10, 4) for s in range(6)]
    b = [feed.global_indices(7, s, 10, 4) for s in reversed(range(6))][::-1]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    stream = np.concatenate(a)  # 24 = 2 full epochs + 4: each epoch is a permutation of range(10)
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert not np.array_equal(feed.global_indices(8, 0, 10, 4), a[0])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((0, 16, 16), np.float32), "empty"),
    (np.zeros((4, 8, 8), np.float32), "8x8"),
    (np.full((4, 16, 16), 2.0, np.float32), r"\[0, 1\]"),
    (np.zeros((4, 16, 16, 3), np.float32), "channels"),
    (np.zeros(5, np.float32), "shape"),
])
def test_bad_training_data_is_refused(bad, match, tmp_path):
    with pytest.raises(DataError, match=match):
        train.train_and_evaluate(CFG, str(tmp_path / "w"), bad, progress=False)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")


def test_batch_must_divide_by_devices(tmp_path):
    cfg = configs.override(CFG, {"train.batch_size": 6})
    with pytest.raises(ValueError, match="divide by the 8 devices"):
        train.train_and_evaluate(cfg, str(tmp_path), _data(), progress=False)


# --- the loop: metrics, checkpoints, resume ---------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 6-step run, and one stopped at step 2 and resumed (+ its state before resuming)."""
    root = tmp_path_factory.mktemp("runs")
    data, val = _data(24), _data(10, seed=9)
    full = train.train_and_evaluate(CFG, str(root / "full"), data, val, progress=False)
    first = train.train_and_evaluate(CFG, str(root / "resumed"), data, val, stop_at=2, progress=False)
    first = jax.device_get(first)
    resumed = train.train_and_evaluate(CFG, str(root / "resumed"), data, val, progress=False)
    return root, jax.device_get(full), first, jax.device_get(resumed)


def test_resumed_run_equals_uninterrupted_run(runs):
    root, full, first, resumed = runs
    assert int(first.step) == 2 and int(full.step) == int(resumed.step) == 6
    assert _max_diff(full.params, resumed.params) == 0.0
    assert _max_diff(full.ema_params, resumed.ema_params) == 0.0
    assert _max_diff(full.opt_state, resumed.opt_state) == 0.0


def test_workdir_layout_metrics_and_checkpoints(runs):
    root, full, _, _ = runs
    wd = root / "full"
    assert configs.from_json((wd / "config.json").read_text()) == CFG
    assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]  # keep_checkpoints = 2
    lines = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "loss" in r]
    val_lines = [r for r in lines if "val_loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4, 6] and [r["step"] for r in val_lines] == [3, 6]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in train_lines[1:])
    assert all(np.isfinite(r["val_loss"]) and np.isfinite(r["val_loss_ema"]) for r in val_lines)
    ema, cfg = train.load_params(str(wd))
    assert cfg == CFG and _max_diff(ema, full.ema_params) == 0.0
    online, _ = train.load_params(str(wd), which="params", step=3)
    assert _max_diff(online, full.params) > 0  # step 3 differs from step 6


def test_validation_loss_is_reproducible(runs):
    root, _, _, _ = runs
    val = lambda name: [r for r in map(json.loads, (root / name / "metrics.jsonl").read_text().splitlines())  # noqa: E731
                        if "val_loss" in r]
    full, resumed = val("full"), val("resumed")
    assert full[-1] == resumed[-1]  # same weights, same fixed t and noise -> same number


def test_finished_run_resumes_to_nothing(runs):
    root, full, _, _ = runs
    again = train.train_and_evaluate(CFG, str(root / "full"), _data(24), progress=False)
    assert int(again.step) == 6 and _max_diff(again.params, full.params) == 0.0


def test_resume_with_a_different_model_is_refused(runs):
    root, _, _, _ = runs
    other = configs.override(CFG, {"model.dim": 16})
    with pytest.raises(ValueError, match=r"different model/diffusion config \(model.dim: 8 -> 16"):
        train.train_and_evaluate(other, str(root / "full"), _data(24), progress=False)


# --- btd-jax train ----------------------------------------------------------------------------------
