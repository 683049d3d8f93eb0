"""Server-rendered page shells: one layout, one body per page, settings for the scripts.

Pages are plain HTML with a small ES module each (``static/<page>.js``, ``type="module"``)
that imports what it needs from ``console.js``; no build step: the browser runs the files as
they are, and everything they load comes from the console's own ``/static`` folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from string import Template

HERE = Path(__file__).resolve().parent
PAGES_DIR = HERE / "pages"
STATIC_DIR = HERE / "static"


@dataclass(frozen=True)
class Page:
    slug: str
    title: str
    blurb: str
    scripts: tuple[str, ...] = ()  # modules static/<name>.js after console.js; default (slug,)


PAGES = (
    Page("inspect", "Inspect", "anomaly map and detections of one image"),
    Page("categories", "Categories", "descriptions, reference images, versions"),
    Page(
        "jobs",
        "Pipelines & jobs",
        "start, follow and cancel pipelines and jobs",
        ("gallery", "pipelines", "jobs"),
    ),
    Page(
        "datasets",
        "Datasets",
        "imported labelled sets, what they hold, galleries of any stored image set",
        ("gallery", "datasets"),
    ),
    Page(
        "models",
        "Models",
        "registry, versions, stages, galleries of a version's predictions",
        ("gallery", "models"),
    ),
    Page(
        "evaluation",
        "Evaluation",
        "a model version's errors on a split, compared with another version; exports for review",
        ("evaluation", "compare"),
    ),
)
BY_SLUG = {page.slug: page for page in PAGES}


@lru_cache
def _template(name: str) -> Template:
    return Template((PAGES_DIR / name).read_text(encoding="utf-8"))


def _nav(current: str) -> str:
    links = []
    for page in PAGES:
        here = ' aria-current="page"' if page.slug == current else ""
        links.append(f'<a href="/{page.slug}"{here} title="{page.blurb}">{page.title}</a>')
    return "\n".join(links)


def _gallery(slug: str) -> str:
    """The gallery panel (``static/gallery.js``) for the pages that show one; the Datasets
    page also offers every stored pool, the others only the sets their page offers."""
    if "gallery" not in BY_SLUG[slug].scripts:
        return ""
    return _template("gallery.html").substitute(pools="all" if slug == "datasets" else "")


def render(slug: str, config: dict[str, object]) -> str:
    """The full HTML of one page; ``config`` is handed to the scripts as JSON."""
    page = BY_SLUG[slug]
    body = _template(f"{slug}.html").substitute(gallery=_gallery(slug))
    return _template("layout.html").substitute(
        title=html.escape(page.title),
        slug=slug,
        nav=_nav(slug),
        body=body,
        scripts="\n".join(
            f'<script type="module" src="/static/{name}.js"></script>'
            for name in page.scripts or (slug,)
        ),
        config=html.escape(json.dumps(config), quote=True),
    )
