"""The docs site: built with warnings as errors, tables generated from the registries, every public name documented."""

import importlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
_NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


pytestmark = pytest.mark.skipif(
    not all(_installed(m) for m in _NEEDED),
    reason="the docs extra is not installed (pip install -e '.[docs]'; '.[test]' includes it)")

# Modules whose __all__ is the public API that the reference pages document.
PUBLIC = (
    "btd_jax.configs", "btd_jax.configs.reductions", "btd_jax.score", "btd_jax.scoring.variants", "btd_jax.schedules",
    "btd_jax.diffusion", "btd_jax.models", "btd_jax.train", "btd_jax.metrics", "btd_jax.calibration",
    "btd_jax.evaluate", "btd_jax.plots", "btd_jax.localize", "btd_jax.screen", "btd_jax.clinical_io",
    "btd_jax.baselines", "btd_jax.attacks", "btd_jax.convert", "btd_jax.export", "btd_jax.checkpoints", "btd_jax.parallel",
    "btd_jax.keys", "btd_jax.runtime", "btd_jax.timing",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner about its successor
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                        "--site-dir", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout}\n{r.stderr}"
    return out


def _inventory(site: pathlib.Path) -> dict:
    """objects.inv (Sphinx inventory v2): identifier -> page URI."""
    data = (site / "objects.inv").read_bytes()
    body = zlib.decompress(data.split(b"\n", 4)[4]).decode()
    entries = {}
    for line in body.splitlines():
        name, _domain_role, _priority, uri = line.split(" ", 4)[:4]
        entries[name] = uri
    return entries


def _resolve(path: str):
    """The Python object at a dotted path (module, then attributes)."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)  # a dataclass field without a default has no class attribute
        return obj
    raise ImportError(path)


def test_site_builds_with_every_api_page(site):
    nav_pages = sorted(p.stem for p in (ROOT / "docs" / "api").glob("*.md"))
    assert nav_pages, "no API reference pages"
    for page in nav_pages:
        html = (site / "api" / page / "index.html").read_text()
        assert 'class="doc doc-heading"' in html or page == "btd_jax", f"api/{page}.md renders no object"
    assert (site / "index.html").is_file()


def test_tables_are_generated_from_the_registries(site):
    from btd_jax import configs
    from btd_jax.configs import reductions
    from btd_jax.scoring import variants

    configs_html = (site / "api" / "configs" / "index.html").read_text()
    for r in reductions.REDUCTIONS.values():
        assert f"<td><code>{r.spelling()}</code></td>" in configs_html, r.spelling()
    for name in configs.NAMES:
        assert f"<td><code>{name}</code></td>" in configs_html, name
    scoring_html = (site / "api" / "scoring" / "index.html").read_text()
    for name in variants.names():
        assert f"<td><code>{name}</code></td>" in scoring_html, name
    for page in (site / "api").rglob("*.html"):
        assert "<!-- generated:" not in page.read_text(), f"{page}: a table marker was left unreplaced"


def test_every_public_name_is_documented(site):
    inventory = _inventory(site)
    by_suffix = {}
    for ident in inventory:
        by_suffix.setdefault(ident.rsplit(".", 1)[-1], []).append(ident)
    missing = []
    for module in PUBLIC:
        mod = importlib.import_module(module)
        for name in mod.__all__:
            if f"{module}.{name}" in inventory:
                continue
            # documented where it is defined (or re-exported) under the same name: the same object
            obj = getattr(mod, name)
            if not any(_resolve(ident) is obj for ident in by_suffix.get(name, ())):
                missing.append(f"{module}.{name}")
    assert not missing, f"public names missing from the API reference: {missing}"
