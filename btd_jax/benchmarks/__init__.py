"""Measurements shared by ``btd-jax bench`` and the experiments: what is timed and how.

* :mod:`~btd_jax.benchmarks.devices` -- the device, versions and the peak FLOP/s table;
* :mod:`~btd_jax.benchmarks.scoring` -- BTD d = 1 throughput of the jitted scorer (patches/s, GFLOP/s);
* :mod:`~btd_jax.benchmarks.training` -- one optimiser step: images/s and share of peak FLOP/s;
* :mod:`~btd_jax.benchmarks.inputs` -- the input pipeline's training crops/s from a slice store;
* :mod:`~btd_jax.benchmarks.screening` -- seconds per slice of screening and of exhaustive search;
* :mod:`~btd_jax.benchmarks.suite` -- all of them in one run, one JSON (``btd-jax bench --suite``).

Timings are measurements for JSON reports, never assertions.
"""
