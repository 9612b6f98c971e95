"""``--help`` of every command: each option states its default at most once, and correctly."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from typing import Any

import pytest

import semclip_bench.runner.commands as run_commands
from semclip_bench.cli import build_parser, main


def _commands(
    parser: argparse.ArgumentParser, name: str = "python -m semclip_bench"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _commands(sub, f"{name} {sub_name}")


def _option_help(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.Action, str]]:
    """Each option's help text as ``--help`` prints it (line breaks removed)."""
    formatter = parser._get_formatter()
    return {
        action.option_strings[0] if action.option_strings else action.dest: (
            action,
            formatter._expand_help(action) if action.help else "",
        )
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        and not isinstance(action, argparse._SubParsersAction)
    }


def _run_config(command: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The configuration ``command`` runs when no flag is given."""
    seen = []
    monkeypatch.setattr(run_commands, "execute", lambda config, *_: seen.append(config))
    assert main([command]) == 0
    return seen[0]


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, tuple):
        return "/".join(map(str, value))
    return str(value)


COMMANDS = dict(_commands(build_parser()))


def test_every_command_is_checked() -> None:
    expected = {"sweep", "ablate", "report", "verify", "data synth", "data check", "pretrain",
                "pretrain evaluate", "cache info", "cache clear"}  # fmt: skip
    assert expected <= {name.removeprefix("python -m semclip_bench ") for name in COMMANDS}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_states_each_default_once(command: str) -> None:
    for option, (action, text) in _option_help(COMMANDS[command]).items():
        assert text.lower().count("default") <= 1, (option, text)
        assert "(default: None)" not in text and "(default: [])" not in text, (option, text)
        if action.nargs == 0:  # a flag: its default is its absence
            assert "(default: " not in text, (option, text)
            if isinstance(action, argparse._StoreConstAction) and "default" in text:
                assert COMMANDS[command].get_default(action.dest) == action.const, option
        stated = re.search(r"\(default: ([^;)]*)", text)
        default = action.default
        if stated and default not in (None, argparse.SUPPRESS) and default != []:
            assert stated.group(1) == _shown(default), (option, text)


@pytest.mark.parametrize("command", ["sweep", "ablate"])
def test_run_flags_show_the_defaults_the_command_runs(
    command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run flags' stated default values come from the run configuration and must match
    the configuration the command runs without flags."""
    config = _run_config(command, monkeypatch)
    checked = 0
    for option, (action, text) in _option_help(
        COMMANDS[f"python -m semclip_bench {command}"]
    ).items():
        stated = re.search(r"\(default: ([^;)]*)\)$", text)
        value = getattr(config, action.dest, None)
        if stated and " " not in stated.group(1):  # a value, not words ("all of them")
            assert stated.group(1) == _shown(value), (option, text)
            checked += 1
    assert checked >= 10
