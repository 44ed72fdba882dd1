"""Training internals; the public entry point is :mod:`btd_jax.train`."""
