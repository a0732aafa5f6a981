"""Every command's options are dataclass fields: the flags are made from them (cli.py writes no
default and no help of its own), each flag reads back into its field, and a default is shown
as the dataclass states it."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from neuronpath.cli import COMMANDS, build_parser
from neuronpath.errors import InputError
from neuronpath.methods import REGISTRY
from neuronpath.options import (
    add_flags,
    flag_name,
    flag_of,
    names,
    nested,
    option_fields,
    read_flags,
    setting,
)

CLI = Path(__file__).resolve().parents[1] / "src" / "neuronpath" / "cli.py"


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_of_every_command_is_a_field_of_its_options():
    for name, sub in _subparsers(build_parser()).items():
        command = COMMANDS[name]
        fields = option_fields(command.options)
        if command.method_flags:
            fields += [f for m in REGISTRY.values() for f in dataclasses.fields(m.options)]
        flags = {"-h", "--help"}
        for f in fields:
            flags.add(flag_of(flag_name(f)))
            if f.metadata.get("old_flag"):
                flags.add(flag_of(f.metadata["old_flag"]))
        positional = {flag_name(f) for f in fields if f.metadata.get("positional")}
        for action in sub._actions:
            if action.help != argparse.SUPPRESS:  # every listed flag says what it does
                assert (action.help or "").strip(), (name, action.dest)
            if action.option_strings:
                assert set(action.option_strings) <= flags, (name, action.option_strings)
                if action.dest != "help":
                    assert action.default is None, (name, action.dest)  # defaults: the fields'
            else:
                assert action.dest in positional, (name, action.dest)


def test_cli_writes_no_flag_default_or_help_of_its_own():
    text = CLI.read_text()
    assert len(re.findall(r"add_argument\(", text)) == 1  # -q, the command line's own flag
    assert "default=" not in text and 'help="' not in text.replace('help="only warnings', "")


@dataclasses.dataclass(frozen=True)
class Inner:
    size: int = setting(3, "a size", type=int)
    names: tuple[str, ...] = setting(("a",), "some names", parse=names, old_flag="words")


@dataclasses.dataclass(frozen=True)
class Extra:
    depth: int = setting(1, "a depth", type=int)


@dataclasses.dataclass(frozen=True)
class Outer:
    run: str = setting(None, "a run", positional=True)
    fast: bool = setting(False, "go fast")
    inner: Inner = nested(Inner, "inner", defaults={"size": 5})
    extra: Extra | None = nested(Extra, "extra", optional=True)
    hidden: int = setting(7, cli=False)


def test_flags_read_back_into_the_fields_with_the_commands_defaults(capsys):
    parser = argparse.ArgumentParser()
    add_flags(parser, Outer)
    assert read_flags(parser.parse_args(["r"]), Outer) == Outer("r", inner=Inner(size=5))
    got = read_flags(parser.parse_args(["r", "--fast", "--size", "9", "--names", "x,y"]), Outer)
    assert got.fast and got.inner == Inner(9, ("x", "y")) and got.extra is None
    assert read_flags(parser.parse_args(["r", "--depth", "4"]), Outer).extra == Extra(4)
    helps = {a.dest: a.help for a in parser._actions}
    assert helps["size"] == "a size (default: 5)" and helps["names"] == "some names (default: a)"
    old = read_flags(parser.parse_args(["r", "--words", "q"]), Outer)
    assert old.inner.names == ("q",) and "--words is now --names" in capsys.readouterr().err
    assert "hidden" not in helps


def test_a_bad_value_is_the_options_own_one_line_error():
    from neuronpath.cli import main

    with pytest.raises(SystemExit):
        main(["prune", "--keep", "one"])  # argparse: comma-separated integers
    with pytest.raises(InputError, match="fast"):
        from neuronpath.engine.attribution import AttributionConfig

        AttributionConfig(fast=True, steps=7)


def test_no_module_but_the_run_type_reads_a_manifests_keys():
    """The run type (experiments/run.py) owns the find manifest; the store (io/store.py) owns
    the file format.  Nothing else indexes a manifest dict."""
    package = CLI.parent
    pattern = re.compile(r"manifest\[|manifest\.get\(|\[[\"']settings[\"']\]|\.get\([\"']settings")
    allowed = {package / "experiments" / "run.py", package / "io" / "store.py"}
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in sorted(package.rglob("*.py"))
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders
