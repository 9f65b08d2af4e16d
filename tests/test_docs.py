"""The documentation: a README short enough to be a landing page that links every page under
docs/, links that lead somewhere, and a glossary that defines the words the pages use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
# Pages written beside the README; docs/deploy.md is linked from the README like the others.
REQUIRED_PAGES = ["architecture", "handlers", "triggers", "schedules", "udf", "configuration",
                  "operations", "deploy", "console", "mysql", "sandbox", "benchmarks",
                  "development"]
README_MAX_LINES = 250  # a landing page; the reference lives in docs/
# The words the other pages use without explaining them: the glossary must define each.
GLOSSARY_TERMS = [
    "gearmand", "function", "job", "payload", "unique", "UDF", "trigger", "handler", "host",
    "supervisor", "worker", "write-back", "batch", "ledger", "token", "ship", "lease", "due",
    "relay", "delivery", "immediate delivery", "outbox delivery", "refused delivery", "attempt",
    "back-off", "dead letter", "snooze", "paused", "unserved", "schedule", "slot", "leader",
    "concurrency slot", "triggers owner", "heartbeat", "sandbox",
]

LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`\n]*`")


def prose(path: Path) -> str:
    """The page without its code blocks and code spans, which hold no links or headings."""
    return CODE.sub("", FENCE.sub("", path.read_text()))


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading suffixed -1, -2..."""
    found: set[str] = set()
    for heading in re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in found:
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_the_readme_is_a_landing_page() -> None:
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move reference to docs/"


def test_the_readme_links_every_page_under_docs() -> None:
    linked = {target.partition("#")[0] for target in links(README)}
    pages = {f"docs/{name}.md" for name in REQUIRED_PAGES} | {f"docs/{p.name}" for p in PAGES}
    assert sorted(pages - linked) == [], f"the README links {sorted(linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_opens_with_a_summary_and_a_way_back(page: Path) -> None:
    lines = page.read_text().splitlines()
    assert lines[0].startswith("# "), "a title first"
    assert lines[1] == "" and lines[2].strip(), "then a one-line summary"
    assert any("(../README.md" in line for line in lines[2:8]), "and a link back to the README"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page: Path) -> None:
    documents = {README.resolve(), *(p.resolve() for p in PAGES)}
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page.resolve()
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest in documents and anchor not in anchors(dest):
            broken.append(f"{target}: no such heading in {dest.name}")
    assert broken == []


def test_the_glossary_defines_every_term_the_pages_use() -> None:
    text = (DOCS / "architecture.md").read_text()
    glossary = text.split("\n## Glossary\n", 1)[1].split("\n## ", 1)[0]
    defined = re.findall(r"^- \*\*(.+?)\*\*", glossary, re.MULTILINE)
    assert [term for term in GLOSSARY_TERMS if term not in defined] == []


@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "architecture.md"],
                         ids=lambda p: p.name)
def test_every_page_points_at_the_glossary_before_it_uses_a_term(page: Path) -> None:
    head = "\n".join(page.read_text().splitlines()[:8])
    assert "architecture.md#glossary" in head
