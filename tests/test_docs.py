"""The documentation a reader follows: every relative link lands on a file and, with ``#anchor``, on a
heading there (as GitHub names it); the README's quick start fits on two screens, and its exit
statuses are the command's.

Pages move and headings get renamed; a link that silently stops resolving is found here, not by
the next newcomer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gpupack.errors import ExitStatus

REPO = Path(__file__).resolve().parents[1]
QUICK_START_MAX_LINES = 60

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documentation_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), REPO / "rules" / "README.md",
            REPO / "deploy" / "README.md"]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks: a ``# comment`` in a shell block is no heading."""
    lines, fence = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _FENCE.match(line)
        if match and fence is None:
            fence = match.group(1)
        elif match and match.group(1) == fence:
            fence = None
        elif fence is None:
            lines.append((number, line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lower-cased, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets ``-1``, ``-2`` ... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(page.read_text()):
        match = _HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(page: Path, text: str | None = None) -> list[str]:
    """Each relative link on the page (or in ``text``, read as if it were that page) whose file or
    heading does not exist, as ``page:line: target (reason)``."""
    broken = []
    for number, line in prose_lines(page.read_text() if text is None else text):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if _SCHEME.match(target):
                continue
            path_part, _, anchor = target.partition("#")
            linked = (page.parent / path_part).resolve() if path_part else page
            if not linked.exists():
                reason = "no such file"
            elif anchor and (linked.is_dir() or anchor not in anchors(linked)):
                reason = "no such heading"
            else:
                continue
            broken.append(f"{_shown(page)}:{number}: {target} ({reason})")
    return broken


def _shown(page: Path) -> str:
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else page.name


def section_length(page: Path, heading: str) -> int:
    """Lines from the heading up to (not including) the next heading of any level."""
    headings = [number for number, line in prose_lines(page.read_text()) if _HEADING.match(line)]
    start = next(number for number, line in prose_lines(page.read_text()) if line.strip() == heading)
    end = next((number for number in headings if number > start), len(page.read_text().splitlines()) + 1)
    return end - start


def test_every_relative_link_in_the_docs_resolves() -> None:
    assert [problem for page in documentation_pages() for problem in broken_links(page)] == []


@pytest.mark.parametrize(("link", "reason"), [
    ("[gone](docs/no-such-page.md)", "no such file"),
    ("[renamed](docs/planning.md#no-such-heading)", "no such heading"),
    ("[here](#not-on-this-page)", "no such heading"),
])
def test_a_broken_link_is_caught(link: str, reason: str) -> None:
    readme = REPO / "README.md"
    planted = readme.read_text() + f"\nSee {link} and [the quick start](README.md#quick-start).\n"
    problems = broken_links(readme, planted)
    assert len(problems) == 1 and reason in problems[0], problems


def test_links_in_code_are_not_links_and_headings_follow_github(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# What `action` means for planning\n## Peak sources (`--source`)\n## Outputs\n## Outputs\n"
                    "```sh\n# not a heading\necho [x](missing.md)\n```\nInline `[x](missing.md)` is code.\n")
    assert anchors(page) == {"what-action-means-for-planning", "peak-sources---source", "outputs", "outputs-1"}
    assert broken_links(page) == []


def test_the_readme_quick_start_fits_on_two_screens() -> None:
    assert section_length(REPO / "README.md", "## Quick start") <= QUICK_START_MAX_LINES


def test_the_readme_documents_every_exit_status_the_command_uses() -> None:
    """The README's exit-status table and ``ExitStatus`` are one contract: a status added to one
    and not the other is found here."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Exit statuses", 1)[1].split("\n## ", 1)[0]
    documented = sorted(int(m) for m in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE))
    assert documented == sorted(int(status) for status in ExitStatus)
