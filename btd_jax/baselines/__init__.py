"""The paper's unsupervised baselines (BTD paper, section 4 "Baselines", Table 1) behind one interface.

    from btd_jax import baselines
    baselines.NAMES                       # registry keys, in the order of the paper's Table 1
    b = baselines.get("ae")               # a base.Baseline record: b.display_name ("AE"), b.needs, ...
    state = b.fit(train, b.tiny, key)     # train: (N,H,W) real patches in [0,1]
    scores = b.score(state, patches)      # (M,) higher = more anomalous
    b.save(state, "ae.npz"); state = b.load("ae.npz")

Every module's docstring cites the original method and says what differs from it here; its record
says how the paper's Table 1 names it and what a comparison must give it (``needs``, ``configure``).
Modules load on first ``get`` so importing the package stays cheap.
"""

from __future__ import annotations

import importlib

from btd_jax.baselines.base import Baseline, State

__all__ = ["NAMES", "get", "Baseline", "State"]

# Registry key -> module; ordered like Table 1 of the paper.
_MODULES = {
    "ae": "ae",
    "inpaint_ae": "inpaint_ae",
    "ocvae": "ocvae",
    "unet_ae": "unet_ae",
    "splicebuster": "splicebuster",
    "spliceradar": "spliceradar",
    "satellite_vit": "satellite_vit",
    "ood_ddpm": "ood_ddpm",
}
NAMES = tuple(_MODULES)


def get(name: str) -> Baseline:
    """Returns the baseline registered as ``name``; ``KeyError`` naming the valid ones otherwise."""
    if name not in _MODULES:
        raise KeyError(f"unknown baseline {name!r}; valid names are {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{_MODULES[name]}").BASELINE
