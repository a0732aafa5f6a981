"""Write the command reference, one page per subcommand, from the command line's own parser
(so it says exactly what ``neuronpath COMMAND --help`` says).

    python docs/gen_reference.py            # writes docs/reference/cli/*.md
    python docs/gen_reference.py --check    # exit 1 if a page is out of date

``tests/test_docs.py`` runs the check.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["COLUMNS"] = "100"  # argparse wraps usage lines at the terminal's width

from neuronpath.cli import COMMANDS, build_parser

FOLDER = Path(__file__).resolve().parent / "reference" / "cli"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|").replace("%%", "%")


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest}`" + (" (optional)" if action.nargs == "?" else "")
    metavar = ""
    if action.nargs != 0:
        if action.choices:
            metavar = " {" + ",".join(map(str, action.choices)) + "}"
        else:
            metavar = " " + (action.metavar or action.dest.upper())
    return ", ".join(f"`{flag}{metavar}`" for flag in action.option_strings)


def page(name: str, parser: argparse.ArgumentParser) -> str:
    """The Markdown page of one subcommand."""
    lines = [
        f"# neuronpath {name}",
        "",
        _cell(COMMANDS[name].help),
        "",
        "```text",
        parser.format_usage().strip(),
        "```",
        "",
    ]
    for group in parser._action_groups:
        actions = [
            a for a in group._group_actions if a.help != argparse.SUPPRESS and a.dest != "help"
        ]
        if not actions:
            continue
        title = {"positional arguments": "Arguments", "options": "Options"}.get(
            group.title, group.title[0].upper() + group.title[1:]
        )
        lines += [f"## {title}", "", "| flag | what it does |", "|---|---|"]
        for action in actions:
            required = " **(required)**" if action.required else ""
            lines.append(f"| {_flags(action)}{required} | {_cell(action.help or '')} |")
        lines.append("")
    lines.append(
        "This page is generated from the command line's parser by `python docs/gen_reference.py`."
    )
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """``{file name: text}`` of every page, the index included."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {f"{name}.md": page(name, p) for name, p in sub.choices.items()}
    index = ["# Command reference", "", "| command | what it does |", "|---|---|"]
    index += [f"| [`{n}`]({n}.md) | {_cell(c.help)} |" for n, c in COMMANDS.items()]
    index += ["", "Every command also takes `-q` / `--quiet` before its name (only warnings and "
              "errors are printed).", ""]
    out["index.md"] = "\n".join(index)
    return out


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        path = FOLDER / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python docs/gen_reference.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
