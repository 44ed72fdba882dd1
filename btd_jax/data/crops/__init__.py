"""Training crops: where the slices come from, the crop each batch position takes, the host loader.

* :mod:`~btd_jax.data.crops.sampling` -- candidate centres and a seeded crop per (step, position);
  the slice sets a run trains and validates on;
* :mod:`~btd_jax.data.crops.loader` -- host batches built ahead of the step (grain workers or a thread);
* :mod:`~btd_jax.data.crops.authors_ct` -- the authors' CT training folder, as a crop source or store units.
"""
