"""mkdocs hooks: tables generated from btd_jax's registries, and docstrings' RST roles shown as code.

A page asks for a table with ``<!-- generated: NAME -->`` on a line of its own; NAME is a key of
:data:`TABLES`. An unknown name stops the build, so a page cannot silently lose its table.
"""

from __future__ import annotations

import re
from typing import Callable, Dict

from mkdocs.exceptions import PluginError

from btd_jax import configs
from btd_jax.configs import reductions
from btd_jax.data import readers
from btd_jax.scoring import variants

MARKER = re.compile(r"^<!-- generated: ([a-z_]+) -->$", re.MULTILINE)
# ":mod:`x`" in HTML: the role text before a code span; docstrings keep Sphinx roles for editors.
ROLE = re.compile(r":(?:mod|func|class|meth|attr|data|obj|exc):(<code)")
# "text::" before an indented example: reStructuredText's literal-block marker, one colon in HTML.
LITERAL = re.compile(r"::</p>")


def presets_table() -> str:
    """Every preset of :mod:`btd_jax.configs.presets` with the settings that tell them apart."""
    rows = ["| preset | modality | patch px | U-Net dim x mults | timesteps, schedule | training t | steps x batch "
            "| score (reduction, centre) |", "|---|---|---|---|---|---|---|---|"]
    for name in configs.NAMES:
        c = configs.get(name)
        mults = ",".join(str(m) for m in c.model.dim_mults)
        t = c.train.t_sampling if c.train.t_sampling == "uniform" else f"{c.train.t_sampling} (t_max {c.train.t_max})"
        batch = c.train.batch_size * c.train.grad_accum
        center = "whole patch" if c.score.center is None else c.score.center
        rows.append(f"| `{name}` | {c.modality} | {c.diffusion.image_size} | {c.model.dim} x ({mults}) "
                    f"| {c.diffusion.timesteps}, {c.diffusion.beta_schedule} | {t} | {c.train.num_steps:,} x {batch} "
                    f"| `{c.score.reduction}`, {center} |")
    return "\n".join(rows) + "\n"


TABLES: Dict[str, Callable[[], str]] = {
    "reductions": reductions.markdown_table,
    "variants": variants.markdown_table,
    "presets": presets_table,
    "formats": readers.markdown_table,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in TABLES:
            raise PluginError(f"{page.file.src_uri}: unknown generated table {name!r}; known: {', '.join(TABLES)}")
        return TABLES[name]()

    return MARKER.sub(table, markdown)


def on_page_content(html: str, page, config, files) -> str:
    return LITERAL.sub(":</p>", ROLE.sub(r"\1", html))
