"""The README's "How to add ..." sections name real files: a contributor who follows them
finds every file where the section says it is."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# a backticked repository path with an extension, e.g. `services/anomaly_map/params/catalog.py`
PATH = re.compile(r"`((?:services|shared|tests|agssp|benchmarks)/[\w./-]+\.\w+)`")


def _howto_sections(readme: str) -> dict[str, str]:
    parts = re.split(r"^(#{2,3} .*)$", readme, flags=re.MULTILINE)
    return {
        title: body
        for title, body in zip(parts[1::2], parts[2::2], strict=True)
        if title.lstrip("#").strip().lower().startswith("how to add")
    }


def test_every_file_a_howto_names_exists() -> None:
    # given
    sections = _howto_sections((ROOT / "README.md").read_text())
    # then
    assert sections, "the README has no 'How to add ...' section"
    for title, body in sections.items():
        named = PATH.findall(body.replace("\n", " "))
        assert named, f"{title} names no file"
        missing = [path for path in named if not (ROOT / path).is_file()]
        assert not missing, f"{title} names files that do not exist: {missing}"
