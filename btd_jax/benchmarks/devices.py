"""The machine a benchmark ran on: device kind, software versions, and the chip's peak FLOP/s."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from typing import Any, Dict, Optional

import jax

from btd_jax.timing import load_average

__all__ = ["PEAK_BF16_FLOPS", "peak_flops", "environment"]

# Dense (no sparsity) bfloat16 matrix peak of one chip, from the vendors' spec sheets, for chips that
# JAX shows as one device each; first match on ``device_kind`` wins. Anything else -> None.
PEAK_BF16_FLOPS = (
    (r"H100 PCIe", 756e12),
    (r"\bH100\b|\bH200\b|\bGH200\b", 989e12),
    (r"\bA100\b", 312e12),
    (r"\bL40S\b", 362e12),
    (r"\bL4\b", 121e12),
    (r"TPU v6 lite|TPU v6e", 918e12),
    (r"TPU v5 lite|TPU v5e", 197e12),
    (r"TPU v5p|TPU v5$", 459e12),
    (r"TPU v4$", 275e12),
)

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "btd_jax")


def peak_flops(device_kind: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of one device of ``device_kind`` (:data:`PEAK_BF16_FLOPS`), or None."""
    for pattern, peak in PEAK_BF16_FLOPS:
        if re.search(pattern, device_kind):
            return peak
    return None


def _version(name: str) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> Dict[str, Any]:
    """Backend, device kind and count, peak FLOP/s, package versions, host and load average."""
    dev = jax.local_devices()[0]
    kind = getattr(dev, "device_kind", str(dev))
    return {"backend": jax.default_backend(), "device_kind": kind, "local_devices": jax.local_device_count(),
            "processes": jax.process_count(), "peak_bf16_flops_per_device": peak_flops(kind),
            "versions": {"python": platform.python_version(), **{n: _version(n) for n in _PACKAGES}},
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": load_average()}
