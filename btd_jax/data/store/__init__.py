"""The slice store: windowed slices in ``.npy`` shards with a manifest, for training at scale.

* :mod:`~btd_jax.data.store.slice_store` -- the format, and reading by row (:class:`SliceStore`);
* :mod:`~btd_jax.data.store.writer` -- writing a store from input units, atomically and resumably;
* :mod:`~btd_jax.data.store.sources` -- ``prepare``: a store from any input format (``btd-jax prepare``).
"""
