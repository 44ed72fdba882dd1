"""The exception family for bad input: one message naming the file (or item) and the problem."""

__all__ = ["DataError", "MissingInput"]


class DataError(ValueError):
    """Bad input: names the file (or item) and the problem in one message."""


class MissingInput(DataError, FileNotFoundError):
    """A file or folder the call needs is not there (also a ``FileNotFoundError``)."""
