"""The README and the docs say what exists: every link reaches a file (and a heading), every command
in the README's shell blocks parses, and every config key they set is a key."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flowaction.cli import build_parser
from flowaction.config import valid_keys

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # not inside code blocks
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def test_the_pages_exist_and_the_readme_is_short():
    assert (ROOT / "docs" / "architecture.md").is_file() and (ROOT / "docs" / "results.md").is_file()
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert any("make demo" in line for line in lines[:15]) and any("make test" in line for line in lines[:15])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_reaches_a_file_and_a_heading(page):
    broken = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert broken == []


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [missing](nothing.md) [anchor](#nowhere)\n```\n[code](no.md)\n```\n")
    assert _links(page) == ["#title", "nothing.md", "#nowhere"]
    assert _anchors(page) == {"title"}


def _commands(page: Path) -> list[str]:
    """The ``flowaction`` command lines of a page's shell code blocks (continuation lines joined)."""
    found = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("flowaction "):
                found.append(line[len("flowaction "):])
            elif " -m flowaction " in line:  # torchrun ... -m flowaction train ...
                found.append(line.split(" -m flowaction ", 1)[1])
    return found


README_COMMANDS = _commands(ROOT / "README.md")


def test_the_readme_shows_every_command():
    shown = {shlex.split(line)[0] for line in README_COMMANDS}
    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(subcommands) - {"keys"} <= shown


@pytest.mark.parametrize("line", README_COMMANDS)
def test_every_readme_command_parses(line, capsys):
    words = shlex.split(line)
    parser = build_parser()
    with pytest.raises(SystemExit) as help_exit:  # the subcommand exists and has its help
        parser.parse_args([words[0], "--help"])
    assert help_exit.value.code == 0
    args = parser.parse_args(words)  # every option the line uses exists (argparse exits otherwise)
    keys = set(valid_keys())
    unknown = [item for item in getattr(args, "overrides", []) if item.split("=", 1)[0] not in keys]
    assert unknown == []
