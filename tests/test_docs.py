"""The documentation site: it builds without a warning, and its command-line reference lists every
option of every command (it is generated from the parser, so a renamed option changes the page)."""

import importlib
import inspect
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

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


def documented_callables() -> list[tuple[str, object]]:
    """The functions and methods the API reference page shows (its ``:::`` entries and their members)."""
    page = (ROOT / "docs" / "reference" / "api.md").read_text()
    found = []
    for entry in re.finditer(r"::: ([\w.]+)(?:\n    options:\n      members: \[([^\]]*)\])?", page):
        module, _, name = entry[1].rpartition(".")
        if not module.startswith("medclassify."):
            continue
        obj = getattr(importlib.import_module(module), name)
        if inspect.isclass(obj):
            found += [(f"{entry[1]}.{m}", getattr(obj, m)) for m in (entry[2].split(", ") if entry[2] else [])]
        elif callable(obj):
            found.append((entry[1], obj))
    return found


def test_the_documented_functions_say_what_they_take_and_return():
    """Google-style sections, which mkdocstrings turns into the reference's parameter and return tables."""
    callables = documented_callables()
    assert len(callables) > 20
    for name, function in callables:
        doc = inspect.getdoc(function) or ""
        signature = inspect.signature(function)
        if [p for p in signature.parameters if p not in ("self", "cls")]:
            assert "Args:" in doc, name
        if signature.return_annotation not in (None, "None", inspect.Signature.empty):
            assert "Returns:" in doc, name


class Anchors(HTMLParser):
    """The ids of a page and the links it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(values["id"])
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])


def broken_links(site: Path) -> list[str]:
    """Links between the site's own pages whose page or anchor does not exist."""
    pages = {}
    for html in site.rglob("*.html"):
        parsed = Anchors()
        parsed.feed(html.read_text(encoding="utf-8"))
        pages[html.resolve()] = parsed
    broken = []
    for path, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:")):
                continue
            if not parts.path:
                target = path
            elif parts.path.startswith("/"):  # the 404 page's links start at the site's root
                target = (site / unquote(parts.path).lstrip("/")).resolve()
            else:
                target = (path.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if target.suffix != ".html":
                if not target.exists():
                    broken.append(f"{path.relative_to(site)}: {link}")
                continue
            if target not in pages or (parts.fragment and unquote(parts.fragment) not in pages[target].ids):
                broken.append(f"{path.relative_to(site)}: {link}")
    return broken


def test_the_link_check_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "a.html").write_text('<h2 id="kept">x</h2><a href="#kept">ok</a><a href="#gone">no</a>')
    (tmp_path / "index.html").write_text(
        '<a href="guide/a.html#kept">ok</a><a href="guide/b.html">no</a><a href="https://example.org/#x">out</a>'
    )
    assert sorted(broken_links(tmp_path)) == ["guide/a.html: #gone", "index.html: guide/b.html"]


@pytest.mark.slow
def test_the_site_builds_strictly_with_the_generated_pages(built_site):
    site = built_site
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "--positive-class" in cli and "--set" in cli and 'id="calibrate"' in cli
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    assert "medclassify.runs.operations.calibrate_run" in api and ":class:" not in api
    cite = (site / "cite.html").read_text(encoding="utf-8")
    assert "BloodMNIST" in cite and "Acevedo" in cite and "cff-version" in cite
    # Search works from the disk: the offline plugin puts the index in a script, not a fetched file.
    index = (site / "search" / "search_index.js").read_text(encoding="utf-8")
    assert "conformal" in index.lower()
    # Every page has its Chinese twin behind the language switch, translated or in English.
    for page in ("index.html", "getting-started.html", "tutorials/reproduce-the-paper.html", "reference/cli.html"):
        assert (site / "zh" / page).is_file(), page
    zh = (site / "zh" / "getting-started.html").read_text(encoding="utf-8")
    assert "快速开始" in zh and 'hreflang="en"' in zh
    assert broken_links(site) == []
