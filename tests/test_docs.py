"""The documentation a newcomer reads stays short, true to the files and free of history.

README.md stays a short front page (its three commands are the ones CI runs); every relative link of
README.md and docs/*.md reaches a file, and a heading where it names one; every ``tools/*.py`` and
``configs/...`` path they name exists; they speak of what is, not of issues or sessions."""
import glob
import itertools
import os
import re
import unicodedata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
README_MAX_LINES = 250
THREE_COMMANDS = (
    "bash tools/setup_env.sh",
    ".venv/bin/python tools/train.py configs/upernet_visiongru_ti_synthetic.py",
    ".venv/bin/python -m pytest",
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
HISTORY = re.compile(r"\bissues?\s*#?\d+|\bthis session\b|\bPR\s*#\d+", re.IGNORECASE)
# a repository path, not the tail of another one (".mim/tools/train.py", "<mmseg>/tools/train.py")
TOOL_OR_CONFIG = re.compile(r"(?<![\w/.<>-])((?:tools|configs)/[\w/{},*.-]*\.(?:py|yaml|sh))")


def _pages():
    return [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def _rel(path):
    return os.path.relpath(path, REPO)


def _read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _prose_lines(text):
    """The lines outside fenced code blocks (links in code are code, not links)."""
    inside = False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield line


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    kept = [c for c in heading.strip().lower()
            if c in " -_" or unicodedata.category(c)[0] in "LMN"]
    return "".join(kept).replace(" ", "-")


def _anchors(path):
    seen, anchors = {}, set()
    for line in _prose_lines(_read(path)):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _expand(pattern):
    """``configs/x_{s,m}.py`` -> both names (shell brace expansion, one level per group)."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def test_readme_is_a_short_front_page_with_the_commands_ci_runs():
    text = _read(README)
    lines = text.count("\n") + (0 if text.endswith("\n") else 1)
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most {README_MAX_LINES}): move the "
                                       "detail into a docs/ page and link it")
    starts = [line.strip() for line in text.splitlines()]
    for command in THREE_COMMANDS:
        assert any(line.startswith(command) for line in starts), f"README.md lost the command {command!r}"
    ci = _read(os.path.join(REPO, ".ci", "run"))
    for command in THREE_COMMANDS[0], THREE_COMMANDS[2]:
        assert command in ci.splitlines(), f".ci/run no longer runs the README's {command!r}"


@pytest.mark.parametrize("page", _pages(), ids=_rel)
def test_relative_links_reach_a_file_and_a_heading(page):
    broken = []
    for line in _prose_lines(_read(page)):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            if not os.path.exists(resolved):
                broken.append(f"{target}: no file {_rel(resolved)}")
            elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
                broken.append(f"{target}: {_rel(resolved)} has no heading #{anchor}")
    assert not broken, f"{_rel(page)}: broken links: {broken}"


@pytest.mark.parametrize("page", _pages(), ids=_rel)
def test_named_tools_and_configs_exist(page):
    missing = []
    for named in sorted(set(TOOL_OR_CONFIG.findall(_read(page)))):
        for path in _expand(named):
            if not glob.glob(os.path.join(REPO, path)):
                missing.append(path)
    assert not missing, f"{_rel(page)} names files the repository does not have: {missing}"


@pytest.mark.parametrize("page", _pages(), ids=_rel)
def test_no_session_history(page):
    found = [f"line {n}: {m.group(0)!r}" for n, line in enumerate(_read(page).splitlines(), 1)
             for m in HISTORY.finditer(line)]
    assert not found, (f"{_rel(page)} narrates history ({found}); state what is, and put measurements with "
                       "their dates in docs/benchmarks/ or NOTES.md")


def test_the_checks_can_fail(tmp_path):
    """The helpers see what they must: a broken link, a missing heading, a missing config, history."""
    page = tmp_path / "page.md"
    page.write_text("# A `heading`: here\n[ok](#a-heading-here) [bad](#nowhere) [gone](missing.md)\n"
                    "```\n[in code](missing.md)\n```\n`f[i](x)` configs/no_such_{a,b}.py, issue 21, .mim/tools/x.py\n")
    links = [t for line in _prose_lines(page.read_text()) for t in LINK.findall(INLINE_CODE.sub("", line))]
    assert links == ["#a-heading-here", "#nowhere", "missing.md"]
    assert _anchors(str(page)) == {"a-heading-here"}
    assert TOOL_OR_CONFIG.findall(page.read_text()) == ["configs/no_such_{a,b}.py"]
    assert _expand("configs/no_such_{a,b}.py") == ["configs/no_such_a.py", "configs/no_such_b.py"]
    assert HISTORY.search(page.read_text()).group(0) == "issue 21"
