"""The command line as a Markdown reference page, generated from the parser itself: every command,
its positionals and options with their defaults and choices, and its examples. The documentation
site builds its CLI reference from this at build time, so the page cannot drift from the code."""

from __future__ import annotations

import argparse

from .common import Parser


def _option_row(action: argparse.Action, prog: str) -> list[str]:
    if action.option_strings:
        metavar = "" if action.nargs == 0 else f" {action.metavar or action.dest.upper()}"
        if action.nargs in ("+", "*"):
            metavar += " ..."
        name = ", ".join(f"`{option}{metavar}`" for option in action.option_strings)
    else:
        name = f"`{action.metavar or action.dest.upper()}`" + (" ..." if action.nargs in ("+", "*") else "")
    choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
    text = (action.help or "") % {**vars(action), "prog": prog}  # as argparse fills %(default)s
    return [name, text.replace("|", "\\|"), choices]


def cli_reference(parser: Parser) -> str:
    """Every command of ``parser`` (from :func:`medclassify.cli.build_parser`) as Markdown: one
    section per command with its summary, a table of its arguments and its examples."""
    lines = ["# Command-line reference", "", "Generated from the parser of `medclassify` when the site is built.", ""]
    for name, sub in parser.commands.items():
        lines += [f"## {name}", "", sub.description or "", ""]
        lines += ["| argument | what it does | choices |", "|---|---|---|"]
        rows = [_option_row(action, sub.prog) for action in sub.arguments if action.dest != "help"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        if sub.epilog:
            lines += ["", "```text", sub.epilog.rstrip(), "```"]
        lines.append("")
    return "\n".join(lines)
