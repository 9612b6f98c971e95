"""Command-line interface: ``python -m semclip_bench <command> ...``.

Each command group lives next to the code it drives and registers itself here through an
``add_parser(subparsers)`` function; the parser it adds sets ``func`` (called with the parsed
namespace, returns an exit code). Errors from user input are :class:`UserError` and are printed
as one line; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from semclip_bench._version import __version__
from semclip_bench.errors import UserError

# Modules that contribute commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "semclip_bench.data.commands",
    "semclip_bench.runner.commands",
    "semclip_bench.pretrain.commands",
    "semclip_bench.runner.cache_cli",
)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default once and keeps descriptions' line breaks.

    The default is appended to an option's help unless the help states it already (says
    "default"), the option is a flag without a value (its default is the flag's absence; flags
    sharing one destination would all show that destination's default), or the default is None
    or empty (the help says what happens without the option).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or action.nargs == 0
            or default is None
            or default is argparse.SUPPRESS
            or (isinstance(default, (list, tuple)) and not default)
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available command group."""
    parser = argparse.ArgumentParser(
        prog="python -m semclip_bench",
        description="Few-shot defect detection benchmark for SEM wafer images.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"semclip_bench {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers, _HelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "interrupted: finished work is kept; rerun the same command to resume", file=sys.stderr
        )
        return 130
