"""The documentation cannot drift from the code: the mkdocs site builds without a warning, every
long option of every command is documented, and the README's links into docs/ lead somewhere."""
from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from edgepack.cli import build_parser
from tests.helpers import REPO

DOCS = REPO / "docs"


def _commands(parser: argparse.ArgumentParser, prefix: str = "edgepack"):
    """(command line, parser) for every subcommand, nested ones (compress clip) included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub
                yield from _commands(sub, f"{prefix} {name}")


def _docs_text() -> str:
    return "\n".join(page.read_text() for page in sorted(DOCS.rglob("*.md")))


def test_mkdocs_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is in the dev extra: pip install -e '.[dev]'")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-f", str(REPO / "mkdocs.yml"),
                             "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    built = {p.relative_to(tmp_path / "site").parent.as_posix() for p in (tmp_path / "site").rglob("index.html")}
    for page in DOCS.glob("*.md"):  # every page is in the site (mkdocs' own navigation: no nav list to forget)
        assert (page.stem if page.stem != "index" else ".") in built, page.name


def test_every_long_option_of_every_command_is_documented():
    text = _docs_text()
    missing = []
    for command, parser in [("edgepack", build_parser()), *_commands(build_parser())]:
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and not re.search(re.escape(flag) + r"(?![\w-])", text):
                    missing.append(f"{command} {flag}")
    assert not missing, "options not in docs/*.md: " + ", ".join(sorted(set(missing)))


def test_every_command_has_a_docs_page_that_names_it():
    text = _docs_text()
    for command, _ in _commands(build_parser()):
        name = command.split()[1]
        assert f"edgepack {name}" in text or f"`{name}`" in text, command


def test_readme_links_into_docs_resolve():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 5, "the README should point into docs/"
    for link in links:
        assert (REPO / link).is_file(), link


def test_readme_python_api_runs(tmp_path, monkeypatch):
    """The README's Python block, as written, on the bundled example model."""
    import shutil

    from edgepack.resources import data_dir, example_model

    block = re.search(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    shutil.copy(example_model(), tmp_path / "model.onnx")
    (tmp_path / "calibration").symlink_to(data_dir("calibration"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEPACK_HISTORY", str(tmp_path / "history.sqlite"))
    exec(compile(block.replace('duration="2s"', 'duration="0.2s"'), "README.md", "exec"), {})
    assert (tmp_path / "int8-built.onnx.manifest.json").is_file() and (tmp_path / "ranges.json").is_file()
