"""Medical data: DICOM reading, the paper's preprocessing, datasets. Knows nothing of models."""

from btd_jax.data.errors import DataError

__all__ = ["DataError"]
