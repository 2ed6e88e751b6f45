"""The README and the docs/ pages as a reader follows them: every in-repo link and #anchor leads somewhere, and the
README's excerpt of what `builder up` prints is docs/up.md's recorded run, line for line (issue 31)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.prerequisites import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text outside fenced code blocks (a `#` there is a comment, a `](` an argument)."""
    return re.sub(r"(?ms)^```.*?^```", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces as hyphens, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", prose(page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        ids.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return ids


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_in_repo_link_and_anchor_resolves(page: Path):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not ours to check offline
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading")
    assert not broken, broken


def test_the_readme_links_every_docs_page():
    readme = (REPO / "README.md").read_text()
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    assert not [p.name for p in PAGES[1:] if p.resolve() not in linked]


def test_the_readme_keeps_the_test_command_and_what_was_not_run():
    readme = (REPO / "README.md").read_text()
    assert "\nbash tests/run " in readme and "## What was not run here" in readme
    assert "docs/testing.md#what-was-not-run-here" in readme


def test_the_readme_shows_what_builder_up_printed_in_docs_up():
    """Each line of the README's excerpt (bar `...`) is a line of docs/up.md's recorded run, in the same order."""
    readme, up = (REPO / "README.md").read_text(), (REPO / "docs" / "up.md").read_text()
    excerpt = re.search(r"(?ms)^```text\n(\$ builder up .*?)^```", readme)
    recorded = re.search(r"(?ms)^```\n(\$ builder up .*?)^```", up)
    assert excerpt and recorded, "the README's excerpt or docs/up.md's recorded run is missing"
    lines = recorded.group(1).splitlines()
    at = 0
    for line in excerpt.group(1).splitlines():
        if line == "...":
            continue
        assert line in lines[at:], f"not in docs/up.md's run (or out of order): {line}"
        at = lines.index(line, at) + 1
