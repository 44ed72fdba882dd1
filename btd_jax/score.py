"""Back-in-Time Diffusion scores and residual maps: the public import path (implementation in
:mod:`btd_jax.scoring`).

BTD: map the patch from [0, 1] to the model's units (x; [-1, 1] with ``diffusion.auto_normalize``),
run ``d`` reverse steps of the DDPM (lucidrains ``p_sample``) at t = start_t + d - 1, ..., start_t
starting from x itself, and score the squared residual ``(x - x_d)^2`` (averaged over channels) over
the patch or its central k x k window. Higher means more likely fake. ``d = 1`` at ``start_t = 0``
is deterministic; otherwise a key is needed and the noise of image ``i`` is drawn from
``fold_in(key, i)``, so scores do not depend on batch size, padding or device count::

    scores = btd_score(params, images, cfg, steps=1, center=32)   # (N,) numpy
    scorer = Scorer.load(workdir); scorer.score(images, center=32)  # defaults: cfg.score
"""

from btd_jax.configs import SAMPLERS, parse_reduction
from btd_jax.scoring.residual import center_window, reduce_residual
from btd_jax.scoring.scorer import ResidualModel, Scorer, ScoreResult, btd_score, residual_map
from btd_jax.scoring.stream import resolve_micro_batch, score_and_maps, trace_count, validate_images

__all__ = [
    "SAMPLERS", "btd_score", "residual_map", "score_and_maps", "reduce_residual", "parse_reduction",
    "validate_images", "Scorer", "ScoreResult", "ResidualModel", "trace_count", "center_window",
    "resolve_micro_batch",
]
