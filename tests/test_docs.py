"""The documentation stays inside the repository and in step with the code: every relative link
resolves to a file of the checkout, and docs/architecture.md names exactly each library's public API."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "apps" / "README.md", *sorted((REPO / "docs").glob("*.md")),
         *sorted((REPO / "packages").glob("*/README.md")), *sorted((REPO / "examples").glob("*/README.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", flags=re.DOTALL)  # code is not prose: `f(x)[0](y)` is no link
LIBRARIES = ("prefgraph", "prefquant", "prefgen", "prefreward")


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_is_a_file_of_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(CODE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.is_relative_to(REPO) or not path.exists():
            broken.append(target)
    assert broken == [], f"{page.relative_to(REPO)} links outside the repository or to nothing"


@pytest.mark.parametrize("library", LIBRARIES)
def test_architecture_lists_each_librarys_public_api(library: str) -> None:
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith(f"| `{library}` |"))
    named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row.split("|")[3]))
    public = set(importlib.import_module(library).__all__) - {"__version__"}
    assert named == public, f"docs/architecture.md's {library} row: missing {sorted(public - named)}, not exported {sorted(named - public)}"
