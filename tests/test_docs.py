"""The documentation resolves in a clone: every citation of a docs page (`docs/architecture.md §3.4`) names
a page that exists and a section that is one of its headings, nothing cites the external design notes any
more, and every relative link in README.md and docs/*.md points to an existing file (and heading)."""
import re
import subprocess

import pytest

from tests.conftest import ROOT

SOURCE_SUFFIXES = {".py", ".sh", ".md", ".cpp", ".txt", ".toml", ".ini", ".cfg", ".yml", ".yaml", ".html", ".js"}
SOURCE_NAMES = {"Makefile", "run"}
SKIP_DIRS = {".git", ".venv", "__pycache__", "node_modules", "ckpt", "check_points", "result", "results"}
EXTERNAL_SPEC = "ARCHITECTURE" + ".md"  # spelt in two parts so that this file does not cite it

SECTION = r"\d+(?:\.\d+)*"
# docs/<page>.md, optionally followed by §N, §N.M or a range §N-M.
CITATION = re.compile(rf"docs/([\w\-]+)\.md(?:\s*§\s*({SECTION})(?:\s*[-–]\s*({SECTION}))?)?")
HEADING_NUMBER = re.compile(rf"^#+\s+({SECTION})\.?\s", re.M)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def source_files():
    """The repository's text sources: tracked and not-ignored untracked files (git), else a walk."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
        paths = [ROOT / p for p in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)]
    return sorted(p for p in paths if p.is_file() and (p.suffix in SOURCE_SUFFIXES or p.name in SOURCE_NAMES))


def section_numbers(page):
    """The section numbers ('3', '3.4') of a markdown page's numbered headings."""
    return set(HEADING_NUMBER.findall(page.read_text(encoding="utf-8")))


def citations():
    """(file, line number, page name, [section numbers]) of every docs citation in the sources."""
    found = []
    for path in source_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for match in CITATION.finditer(line):
                page, first, last = match.groups()
                found.append((path.relative_to(ROOT).as_posix(), number, page, section_range(first, last)))
    return found


def section_range(first, last):
    """['2', '3'] for §2-3, ['3.4'] for §3.4, [] for no section; a range's ends must be at the same level."""
    if first is None:
        return []
    if last is None:
        return [first]
    head, start = first.rsplit(".", 1) if "." in first else ("", first)
    end = last.rsplit(".", 1)[-1]
    prefix = head + "." if head else ""
    return [f"{prefix}{n}" for n in range(int(start), int(end) + 1)]


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page):
    return {slug(m) for m in re.findall(r"^#+\s+(.*)$", page.read_text(encoding="utf-8"), flags=re.M)}


def test_the_docs_pages_exist():
    for name in ("README", "architecture", "benchmarks", "metrics"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name


def test_the_citations_are_found():
    # The scan itself works: the network's modules cite the architecture page.
    cited = {(path, page) for path, _, page, _ in citations()}
    assert ("models/selective_scan/__init__.py", "architecture") in cited
    assert ("utils/evaluation/metrics.py", "architecture") in cited


def test_every_cited_page_and_section_exists():
    problems = []
    for path, line, page, sections in citations():
        target = ROOT / "docs" / f"{page}.md"
        if not target.is_file():
            problems.append(f"{path}:{line}: docs/{page}.md does not exist")
            continue
        missing = [s for s in sections if s not in section_numbers(target)]
        if missing:
            problems.append(f"{path}:{line}: docs/{page}.md has no section {', '.join('§' + s for s in missing)}")
    assert not problems, "\n".join(problems)


def test_nothing_cites_the_external_design_notes():
    offenders = []
    for path in source_files():
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if EXTERNAL_SPEC in line:
                offenders.append(f"{path.relative_to(ROOT).as_posix()}:{number}")
    assert not offenders, f"cite docs/architecture.md instead of {EXTERNAL_SPEC}: " + ", ".join(offenders)


MARKDOWN = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


@pytest.mark.parametrize("page", MARKDOWN, ids=[p.relative_to(ROOT).as_posix() for p in MARKDOWN])
def test_relative_links_resolve(page):
    problems = []
    for match in LINK.finditer(page.read_text(encoding="utf-8")):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{target}: no heading #{fragment} in {resolved.name}")
    assert not problems, f"{page.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_docs_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "README.md":
            assert f"]({page.name})" in index, page.name
