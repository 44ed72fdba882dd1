"""Labelled test sets.

* :mod:`~btd_jax.data.testsets.layout` -- the authors' published layout (``CT/<attack>/CT_<attack>.csv``,
  ``MRI/MRI_<attack>.csv``), read as labelled patches or written.
"""
