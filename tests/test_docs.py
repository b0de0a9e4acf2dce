"""The documentation site: it builds without a warning, and its command-line reference lists every
option of every command (it is generated from the parser, so a renamed option changes the page)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medclassify.cli import build_parser
from medclassify.cli.reference import cli_reference

ROOT = Path(__file__).resolve().parents[1]


def test_the_cli_reference_lists_every_command_option_default_and_choice():
    parser = build_parser()
    page = cli_reference(parser)
    for name, sub in parser.commands.items():
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for action in sub.arguments:
            if action.dest == "help":
                continue
            shown = action.option_strings or [action.metavar or action.dest.upper()]
            assert all(f"`{option}" in section for option in shown), (name, shown)
            assert all(f"`{choice}`" in section for choice in action.choices or ()), (name, action.dest)
            if "(default:" in (action.help or ""):
                default = re.search(r"\(default: ([^)]*)", action.help % {**vars(action), "prog": sub.prog}).group(1)
                assert f"(default: {default}" in section, (name, action.dest)


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_generated_pages(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert built.returncode == 0, built.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--positive-class" in cli and "--set" in cli and 'id="calibrate"' in cli
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert "medclassify.runs.operations.calibrate_run" in api and ":class:" not in api
    index = (tmp_path / "site" / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "Conformal" in index or "conformal" in index
