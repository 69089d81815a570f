"""The documentation holds together: the README stays short and links every page of docs/, and every
relative link in the README and in docs/ points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

from tsae_core.config import project_root

ROOT = project_root()
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold no links
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t) and not t.startswith("#")]


def test_the_readme_is_short_and_links_every_docs_page():
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) <= 300
    linked = {(readme.parent / t.split("#")[0]).resolve() for t in _relative_links(readme)}
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no page"
    assert [p.name for p in pages if p.resolve() not in linked] == []


def test_every_relative_link_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = [f"{page.relative_to(ROOT)}: {target}" for page in pages for target in _relative_links(page)
              if not (page.parent / target.split("#")[0]).exists()]
    assert broken == []
