"""Every hint names an option and a value that exist: each ``--option`` that a message, a help
text or an ``option(...)`` call in ``src/`` names is an option of some command of the real
parser, and each value it offers for an option with fixed choices is one of them -- so that a
user who follows the advice of an error does not get a second error."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

from neuronpath.analysis.faithfulness import METRICS
from neuronpath.analysis.pruning import BASELINES
from neuronpath.cli import build_parser
from neuronpath.engine.ablation import ABLATIONS
from neuronpath.methods.registry import REGISTRY

SRC = Path(__file__).resolve().parents[1] / "src" / "neuronpath"
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?:[ =]([a-z0-9][a-z0-9_.+,-]*))?")
# options of other programs that a message tells the user to run, with the program
FOREIGN = {"--local-dir": "hf download"}
# comma-separated list options checked by the project's own tables, not by argparse
LISTS = {
    "--ablation": set(ABLATIONS),
    "--metrics": set(METRICS),
    "--methods": set(REGISTRY),
    "--baselines": set(BASELINES),
}


def parser_options() -> tuple[set[str], dict[str, set[str]]]:
    """Every option string of every command, and the choices of those that have them."""
    options: set[str] = set()
    choices: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)
                continue
            for flag in action.option_strings:
                options.add(flag)
                if action.choices:
                    choices.setdefault(flag, set()).update(map(str, action.choices))

    walk(build_parser())
    return options, {**choices, **LISTS}


def named_options(path: Path):
    """(line, flag, offered value or None, text) for every option a file's code names:
    ``option('name'[, 'value'])`` calls and ``--flag [value]`` in string literals, docstrings
    left out (they describe, they do not advise)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", None))
            args = node.args
            if name == "option" and args and isinstance(args[0], ast.Constant):
                offered = args[1] if len(args) > 1 else None
                value = offered.value if isinstance(offered, ast.Constant) else None
                flag = "--" + args[0].value.replace("_", "-")
                yield node.lineno, flag, value if isinstance(value, str) else None, "option()"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if id(node) in docstrings:
                continue
            for match in FLAG.finditer(node.value):
                yield node.lineno, "--" + match.group(1), match.group(2), node.value[:70]


def mistakes(flag: str, value: str | None, where: str, text: str, options, choices) -> list:
    """What is wrong with one named ``flag`` (offered ``value``): not an option, or not one of
    its choices."""
    if flag in FOREIGN:
        return []
    if flag not in options:
        return [f"{where}: {flag} is no option of any command ({text!r})"]
    if value is not None and flag in choices:
        unknown = [v for v in value.strip(",.").split(",") if v not in choices[flag]]
        if unknown:
            return [f"{where}: {flag} has no choice {', '.join(unknown)} ({text!r})"]
    return []


def test_every_option_a_message_names_exists_with_the_values_it_offers():
    options, choices = parser_options()
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        for line, flag, value, text in named_options(path):
            where = f"{path.relative_to(SRC)}:{line}"
            wrong += mistakes(flag, value, where, text, options, choices)
    assert not wrong, "\n".join(wrong)


def test_label_refusals_as_printed_name_options_that_exist():
    """A message can be made at run time (a labels file's refusals are the folder mapping's,
    worded for labels), so the printed text is checked too: every refusal of the label
    mapping, for folders and for a labels file, on the command line."""
    from neuronpath.errors import InputError, command_line_options
    from neuronpath.io.labels import LABEL_MAPPINGS, map_labels
    from neuronpath.io.sources import _label_ids

    options, choices = parser_options()
    synsets = {i: f"n0{i:07d}" for i in range(3)}
    cases = [
        (["n00000000", "n09999999"], synsets),  # some names known, one not
        (["n00000000", "n00000001", "n00000002", "n00000003"], synsets),  # too many
        (["cat", "dog"], {0: "cat", 1: "cat", 2: "dog"}),  # a name that is two classes
        (["7", "1"], {0: "a", 1: "b"}),  # ids out of range
        (["dog", "tench"], synsets),  # readable names on a synset model
    ]
    printed = []
    with command_line_options():
        for names, id2label in cases:
            for how in LABEL_MAPPINGS:
                for refuse in (
                    lambda: map_labels(names, id2label, how),
                    lambda: _label_ids(names, id2label, how, "--labels-file"),
                ):
                    try:
                        refuse()
                    except InputError as error:
                        printed.append(str(error))
    assert any("--labels sorted-folders" in text for text in printed)
    wrong = [
        problem
        for text in printed
        for match in FLAG.finditer(text)
        for problem in mistakes(
            "--" + match.group(1), match.group(2), "printed", text, options, choices
        )  # fmt: skip
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_itself_catches_a_wrong_option_and_a_wrong_choice(tmp_path):
    """The scan sees both kinds of slip (the one the issue found among them)."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n"
        '    """Docstrings are left out: --nothing."""\n'
        "    raise ValueError(\n"
        "        f\"rename them, or pass --labels sorted-labels {option('lables')}\"\n"
        "    )\n"
    )
    options, choices = parser_options()
    found = list(named_options(sample))
    assert sorted((flag, value) for _, flag, value, _ in found) == [
        ("--labels", "sorted-labels"),
        ("--lables", None),
    ]
    assert "--lables" not in options and "sorted-labels" not in choices["--labels"]
    assert "sorted-folders" in choices["--labels"] and "--labels" in options
