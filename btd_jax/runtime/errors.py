"""Errors of the run-time checks that are not bad input (those are ``btd_jax.data.DataError``)."""

__all__ = ["NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Values became (or were found) NaN or infinite: a diverged run or damaged weights."""
