"""Data-parallel DDPM training with the paper's recipe (lucidrains ``Trainer``), EMA and orbax checkpoints.

    import btd_jax
    cfg = btd_jax.configs.get("ct")
    state = btd_jax.train.train(cfg, "runs/ct", "stores/lidc")        # any input (btd-jax train)
    state = btd_jax.train.train_and_evaluate(cfg, "runs/ct", patches, val_patches)
    params, cfg = btd_jax.train.load_params("runs/ct")          # EMA weights of the newest checkpoint

Modules: ``state`` (TrainState, optimiser, EMA), ``step`` (the jitted steps), ``feed`` (batches of a
step over the mesh), ``checkpoints`` (whole-state save/restore), ``loop`` (``train_and_evaluate``),
``inputs`` (``train``: any input routed to patches or crops, validation held out).
"""

from btd_jax.checkpoints import load_params, save_params_checkpoint
from btd_jax.train.inputs import TrainingData, train, training_data
from btd_jax.train.loop import train_and_evaluate
from btd_jax.train.state import (TrainState, create_train_state, ema_decay, ema_update, learning_rate_schedule,
                                 make_optimizer)
from btd_jax.train.step import batch_sharding, make_eval_step, make_train_step, train_step

__all__ = [
    "TrainState", "create_train_state", "make_optimizer", "learning_rate_schedule", "ema_decay", "ema_update",
    "train_step", "make_train_step", "make_eval_step", "batch_sharding",
    "save_params_checkpoint", "load_params", "train_and_evaluate", "train", "training_data", "TrainingData",
]
