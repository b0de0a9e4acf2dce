"""What every command shares: the one-line parser, options generated from config dataclasses, and output helpers."""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..defaults import DEVICE_HELP
from ..errors import MedclassifyError

if TYPE_CHECKING:  # the training package imports torch; the command line loads it only to train
    from ..training import RunResult


@dataclass(frozen=True)
class Command:
    """One ``medclassify`` command: its one-line help, the examples shown under its options, what
    adds its options to a parser (None: it has none of its own) and what runs it (returning the exit code)."""

    help: str
    epilog: str
    add_options: Callable[[argparse.ArgumentParser], None] | None
    run: Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """Argument errors as one line and exit code 2, without the usage block; remembers which option
    fills each parameter, so that the library's errors can name options (:func:`in_options`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_of: dict[str, str] = {}  # parameter -> its option (--flag, or a positional's METAVAR)
        self.arguments: list[argparse.Action] = []  # every argument added, in order (the tests read them)
        self.commands: dict[str, Parser] = {}  # command -> its parser (on the top-level parser)
        super().__init__(*args, **kwargs)  # it adds --help

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        shown = action.option_strings[0] if action.option_strings else action.metavar or action.dest.upper()
        self.option_of[action.dest] = str(shown)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def in_options(exc: MedclassifyError, parser: Parser) -> str:
    """The library's message with each parameter it names shown as the command's option: the one
    place where Python's names (``format``, ``positive_class``) become the command line's
    (``--format``, ``--positive-class``). A name the command has no option for (a key of a study's
    YAML file) stays as written."""
    message = str(exc)
    for name in exc.parameters:
        if name in parser.option_of:
            option = parser.option_of[name].replace("\\", r"\\")
            message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", option, message, count=1)
    return message


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_config_options(
    parser: argparse.ArgumentParser,
    names: list[str],
    config_type: type | None = None,
    defaults: dict[str, Any] | None = None,
    choices: dict[str, tuple] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """An option for each of the fields ``names`` of a config dataclass (default :class:`.TrainConfig`),
    with the field's help, type and choices. Options left out are absent from the parsed arguments, so
    that a YAML file's values show through; ``defaults`` and ``choices`` replace a field's for a
    command that does something else when the option is left out (``calibrate`` fits a temperature),
    and ``helps`` a field's help where the option means less than the field (``cache --seed`` seeds
    only the folder split)."""
    from ..config import TrainConfig, field_choices, flag

    config_type = config_type or TrainConfig
    defaults, choices, helps = defaults or {}, choices or {}, helps or {}
    hints = typing.get_type_hints(config_type)
    for f in fields(config_type):
        if f.name not in names:
            continue
        default = defaults.get(f.name, f.default)
        help_text = helps.get(f.name, f.metadata["help"])
        if "(default:" not in help_text:  # some helps say in words what None means
            help_text += f" (default: {shown_default(default)})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS, "dest": f.name}
        value_type, many = option_type(hints[f.name])
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = value_type
            allowed = choices.get(f.name, field_choices(config_type).get(f.name))
            if allowed:
                kwargs["choices"] = allowed  # argparse shows them as {a,b,c}
            else:
                kwargs["metavar"] = f.name.upper()
            if many:
                kwargs["nargs"] = "+"
        parser.add_argument(flag(f.name), **kwargs)


def shown_default(value: Any) -> str:
    """A default as every help text shows it: on/off for a switch, none for None."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else str(value)


def add_switch(parser: argparse.ArgumentParser, name: str, help: str, default: bool = False) -> None:
    """A two-way option (``--quiet`` / ``--no-quiet``), as every generated yes/no option is."""
    parser.add_argument(
        f"--{name}",
        action=argparse.BooleanOptionalAction,
        default=default,
        help=f"{help} (default: {shown_default(default)})",
    )


def add_run_argument(parser: argparse.ArgumentParser, help: str, many: bool = False) -> None:
    """The run a command works on, named RUN in every command (``many``: one or more)."""
    parser.add_argument("runs" if many else "run", metavar="RUN", nargs="+" if many else None, help=help)


def add_parallel_options(parser: argparse.ArgumentParser, what: str) -> None:
    """How a study's experiments or a search's trials (``what``) run side by side: processes here, or Ray."""
    parser.add_argument(
        "--workers", type=int, default=1, help=f"{what} at once, in processes that share the cores (default: 1)"
    )
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help=f"local: processes on this machine; ray: Ray ({'Ray Tune, its scheduler stopping poor trials early' if what == 'trials' else 'tasks'}; pip install 'medclassify[ray]') (default: local)",
    )
    parser.add_argument(
        "--address",
        help="with --backend ray: the cluster to join, e.g. auto or ray://HEAD:10001 (default: start Ray here)",
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help=f"a training setting for every one of the {what}, over the file's and checked as they are, e.g. "
        "--set epochs=1 for a smoke test; repeatable (default: none)",
    )


def check_parallel_options(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise MedclassifyError(f"--workers must be >= 1, got {args.workers}")
    if args.address is not None and args.backend != "ray":
        raise MedclassifyError("--address needs --backend ray (the Ray cluster to run on)")


def config_values(args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The options of ``config_type``'s fields that were given."""
    return {f.name: getattr(args, f.name) for f in fields(config_type) if hasattr(args, f.name)}


def option_type(hint: Any) -> tuple[type, bool]:
    """The type one command-line value converts to, and whether the option takes several:
    ``int | None`` -> (int, False), ``list[int] | None`` -> (int, True), ``Literal["a", "b"]`` -> (str, False)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return option_type(typing.get_args(hint)[0])[0], True
    if typing.get_origin(hint) is typing.Literal:
        return type(typing.get_args(hint)[0]), False
    return hint, False


def add_run_data_option(parser: argparse.ArgumentParser) -> None:
    """--data-dir for a command that reads a finished run's data again."""
    parser.add_argument(
        "--data-dir",
        help="where the run's data are now, if they moved since training (default: where config.json says)",
    )


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")


def home(path: Path) -> str:
    """A path under the home folder as ``~/...``, as the help texts show it."""
    home = Path.home()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def print_results(result: RunResult) -> None:
    from ..evaluation import summary_line

    print(summary_line("val ", result.metrics["val"]))
    print(summary_line("test", result.metrics["test"]))
    print(
        f"best epoch {result.metrics['best_epoch']}; results in {result.run_dir}/ "
        "(config.json, history.csv, metrics.json, predictions.csv, best.pt, last.pt, MODEL_CARD.md)"
    )


def report_skipped(command: str, skipped: list[tuple[str, str]], n_read: int) -> None:
    """One line per unreadable file; an error when no file could be read."""
    for _, reason in skipped:
        print(f"medclassify {command}: skipped {reason}", file=sys.stderr)
    if not n_read:
        raise MedclassifyError(f"none of the {len(skipped)} file(s) given is a readable image")


def size_text(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"
