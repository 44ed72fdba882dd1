"""The one exception type for bad input data."""


class DataError(ValueError):
    """Bad input: names the file (or item) and the problem in one message."""
