"""MkDocs hooks: the command-line reference page is generated from medclassify's own parser at build
time (see ``medclassify.cli.reference``), so it lists exactly the options the installed command has;
the citation page's table of dataset sources comes from the package's catalogue; the docstrings'
cross-reference roles (``:class:`X```) are shown as the names they point to."""

import re

from medclassify.cli import build_parser
from medclassify.cli.reference import cli_reference
from medclassify.data.catalog import dataset_catalog

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr):(<code>)")


def dataset_sources() -> str:
    rows = [
        f"| {info.display_name} | {info.source} | {info.license} |"
        for info in dataset_catalog().values()
        if not info.synthetic
    ]
    return "\n".join(["| dataset | images from | licence |", "|---|---|---|", *rows])


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "reference/cli.md":
        return cli_reference(build_parser())
    return markdown.replace("<!-- dataset-sources -->", dataset_sources())


def on_page_content(html, page, config, files):
    return ROLE.sub(r"\1", html)
