"""Command line: a table of subcommands.  Each subcommand is an options class -- a dataclass
whose fields (nested options objects included) are its flags, with their defaults and help --
a function that runs it, and what it prints.  The flags are made from the fields by
:mod:`neuronpath.options`, so this file holds no default and no help text of an option: a new
option is one field, next to what it configures.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import InputError, NeuronpathError, command_line_options
from .experiments.benchmark import (
    BenchmarkCommand,
    plants_table,
    recovery_table,
    run_benchmarks,
)
from .experiments.causal import run_causal
from .experiments.classes import ClassesCommand, run_classes
from .experiments.evaluate import EvaluateCommand, run_evaluate
from .experiments.find import DemoCommand, FindCommand, default_methods, run_find
from .experiments.matrix import MatrixCommand, run_matrix
from .experiments.neurons import NeuronsCommand, run_neurons
from .experiments.plant import PlantCommand, run_plant
from .experiments.prune import PruneCommand, PruneOptions, run_prune
from .experiments.ranks import leave_ranks
from .experiments.report import ReportCommand, run_report
from .experiments.sae_train import SAETrainCommand, report_table, run_sae_train
from .experiments.summary import SummaryCommand, summary_text
from .experiments.table import TableCommand, run_table
from .methods import REGISTRY
from .models.demo import demo_data_dir, demo_model_dir
from .models.spec import ModelSpec
from .options import add_flags, flag_of, given, read_flags
from .report.text import format_class_report

log = logging.getLogger("neuronpath")

BUG = (
    "neuronpath: this is a bug in neuronpath, not a problem with your input; please report "
    "it with the traceback above"
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its options class (its docstring's first paragraph is the command's help),
    the function that runs it on the parsed options (returning what to print, None on the
    other ranks of a torchrun job), the flags it requires, and whether the path methods' own
    options are flags of it."""

    options: type
    run: Callable
    required: tuple[str, ...] = ()
    method_flags: bool = False

    @property
    def help(self) -> str:
        return " ".join((self.options.__doc__ or "").split("\n\n")[0].split())


def _method_options(args, names) -> dict:
    """``{method: options}`` for the chosen methods (controls pass through as None), from
    their flags; a flag of a method that is not chosen is refused (it would do nothing)."""
    chosen = {}
    for name in names:
        method = REGISTRY.get(name)
        chosen[name] = None if method is None else method.options(**given(args, method.options))
    for method in REGISTRY.values():
        if method.name not in names:
            for key in given(args, method.options):
                raise InputError(
                    f"{flag_of(key)}: an option of method {method.name}, which is not "
                    f"among {flag_of('methods')} {','.join(names)}"
                )
    return chosen


def _with_methods(options, args, units: str):
    """``options`` (find's or prune's) with each chosen method's options from its flags (no
    ``--methods``: the defaults defined for ``units``) and the command line recorded."""
    names = default_methods(units) if options.methods is None else list(options.methods)
    chosen = _method_options(args, names)
    if options.methods is None and all(o is None or o == type(o)() for o in chosen.values()):
        chosen = None  # the defaults, as run_find resolves and logs them
    return replace(options, methods=chosen, command=tuple(sys.argv))


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _find(command: FindCommand, args) -> str | None:
    spec, data, out = command.spec, command.data, command.out
    if command.is_demo:
        spec, data = (
            replace(spec, model=ModelSpec.model),
            replace(data, data=demo_data_dir() / "test"),
        )
        out = out or DemoCommand.out
    elif spec.model == ModelSpec.model or data.data is None or out is None:
        raise InputError(
            "find: give --model, --data and --out (or none of --model/--data for the built-in demo)"
        )
    options = _with_methods(command.options, args, spec.units)
    run_dir = run_find(spec, data, out, options, command.execution)
    return f"records: {run_dir / 'records.jsonl'}" if _main_rank() else None


def _demo(command: DemoCommand, args) -> str | None:
    spec = ModelSpec(str(demo_model_dir(retrain=True)) if command.retrain else ModelSpec.model)
    options = _with_methods(command.options, args, spec.units)
    data = demo_data_dir() / "test"
    run_dir = run_find(spec, data, command.out, options, command.execution)
    if not _main_rank():
        return None
    return f"records: {run_dir / 'records.jsonl'}\n{summary_text(run_dir)}"


def _evaluate(command: EvaluateCommand, args) -> str | None:
    edit, execution, study = command.edit_options, command.execution, command.study
    metrics = run_evaluate(
        command.run,
        ops=command.options.ops,
        options=edit,
        faithfulness=study,
        curves=command.options.curves,
        execution=execution,
    )
    causal = (
        run_causal(command.run, options=edit, execution=execution)
        if command.options.causal
        else None
    )
    if metrics is None:  # another rank of a torchrun job
        return None
    out = Path(command.run) / "evaluation"
    lines = [
        (out / "table.md").read_text(),
        f"wrote {out / 'metrics.json'}, {out / 'table.md'}, {out / 'figure3.png'}",
    ]
    if command.options.curves:
        lines += [
            (out / "curves.md").read_text(),
            f"wrote {out / 'curves.csv'}, {out / 'cpr_cmd.csv'}, {out / 'curves.md'}, "
            f"{out / 'curves.png'}",
        ]
    elif study is not None:
        lines += [
            (out / "faithfulness.md").read_text(),
            f"wrote {out / 'faithfulness.csv'}, {out / 'faithfulness.md'}, "
            f"{out / 'faithfulness.png'}",
        ]
    if causal is not None:
        folder = Path(command.run) / "causal"
        lines += [
            (folder / "causal.md").read_text(),
            f"wrote {folder / 'metrics.json'}, {folder / 'causal.md'}, {folder / 'layers.png'}",
        ]
    return "\n".join(lines)


def _classes(command: ClassesCommand, args) -> str:
    return format_class_report(run_classes(command.run, command.options))


def _prune(command: PruneCommand, args) -> str | None:
    options: PruneOptions = _with_methods(command.options, args, command.spec.units)
    if run_prune(command.spec, command.data, command.out, options, command.execution) is None:
        return None
    out = Path(command.out)
    return (
        f"{(out / 'table3.md').read_text()}\nwrote {out / 'results.json'}, figure6.png, table3.md"
    )


def _report(command: ReportCommand, args) -> str | None:
    page = run_report(command.run, command.options, command.execution)
    return None if page is None else f"wrote {page}"


def _neurons(command: NeuronsCommand, args) -> str | None:
    if command.run is None and command.model is None:
        raise InputError("neurons: give a find run, or --model M with --select L:I,...")
    spec = ModelSpec(command.model) if command.model else None
    where = run_neurons(command.data, command.run, spec, command.options, command.execution)
    return None if where is None else f"wrote {where / 'atlas.npz'}, {where / 'top.csv'}"


def _table(command: TableCommand, args) -> str:
    return "\n".join(f"wrote {p}" for p in run_table(command.runs, command.out, command.names))


def _summary(command: SummaryCommand, args) -> str:
    return summary_text(command.run)


def _plant(command: PlantCommand, args) -> str | None:
    if not _main_rank():  # one process plants; the others have nothing to do
        return None
    planted = run_plant(command.spec, command.data, command.out, command.options, command.execution)
    out = Path(command.out)
    if "plants" in planted:  # several seeds
        folders = ", ".join(str(out / f) for f in planted["plants"].values())
        return f"planted {len(planted['plants'])} models: {folders}\nwrote {out / 'plants.json'}"
    checks = planted["verification"]["checks"]
    lines = [f"  ({key}) {c['check']}: {c['value']:.3f} holds" for key, c in checks.items()]
    units = ", ".join(f"L{l} N{n}" for l, n in planted["units"].items())
    return "\n".join(
        [f"planted chain {units} -> {planted['target']['name']}", *lines,
         f"wrote {out} ({out / 'planted.json'}, {out / 'images'}, {out / 'clean'})"]
    )  # fmt: skip


def _matrix(command: MatrixCommand, args) -> str:
    run_matrix(
        command.runs,
        command.out,
        command.baseline,
        command.methods,
        command.bootstrap,
        command.seed,
    )
    out = Path(command.out)
    return f"{(out / 'matrix.md').read_text()}wrote {out / 'matrix.json'}, {out / 'matrix.csv'}"


def _benchmark(command: BenchmarkCommand, args) -> str | None:
    if not _main_rank():
        return None
    found = run_benchmarks(
        command.runs, command.planted, command.out, command.bootstrap, command.seed
    )
    lines = []
    for summary in found["runs"]:
        units = {int(l): n for l, n in summary["units"].items()}
        out = Path(summary["run"]) / "benchmark"
        table = recovery_table(summary["results"], units, summary["distractors"])
        lines.append(f"{table}wrote {out / 'recovery.csv'}, {out / 'recovery.md'}")
    if found["summary"] is not None:
        out = Path(command.out)
        lines.append(
            f"{plants_table(found['summary']['rows'])}wrote {out / 'plants.csv'}, "
            f"{out / 'plants.md'}"
        )
    return "\n".join(lines)


def _sae(command: SAETrainCommand, args) -> str | None:
    if not _main_rank():
        return None
    report = run_sae_train(
        command.spec,
        command.data,
        command.out,
        command.options,
        command.execution,
        command.save_every,
        command.save_steps,
    )
    out = Path(command.out)
    return f"{report_table(report)}wrote {out / 'saes.txt'}, {out / 'report.md'}, {out}/layerLL/"


COMMANDS: dict[str, Command] = {
    "find": Command(FindCommand, _find, method_flags=True),
    "demo": Command(DemoCommand, _demo, method_flags=True),
    "summary": Command(SummaryCommand, _summary),
    "evaluate": Command(EvaluateCommand, _evaluate),
    "classes": Command(ClassesCommand, _classes),
    "prune": Command(PruneCommand, _prune, required=("model", "data", "out"), method_flags=True),
    "report": Command(ReportCommand, _report),
    "neurons": Command(NeuronsCommand, _neurons, required=("data",)),
    "table": Command(TableCommand, _table),
    "matrix": Command(MatrixCommand, _matrix),
    "plant": Command(PlantCommand, _plant, required=("model", "data", "out")),
    "benchmark": Command(BenchmarkCommand, _benchmark),
    "sae": Command(SAETrainCommand, _sae, required=("model", "data", "out")),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuronpath",
        description="Influential neuron paths in vision Transformers (Wang et al., ICLR 2025).",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        add_flags(p, command.options)
        if command.method_flags:
            for method in REGISTRY.values():
                if dataclasses.fields(method.options):
                    add_flags(p, method.options, title=f"{method.name} options")
        for action in p._actions:
            if action.dest in command.required:
                action.required = True
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="neuronpath: %(message)s", level=logging.WARNING if args.quiet else logging.INFO
    )
    try:
        with command_line_options():
            command = COMMANDS[args.command]
            printed = command.run(read_flags(args, command.options), args)
            if printed is not None and _main_rank():
                print(printed)
    except NeuronpathError as error:
        print(f"neuronpath: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's, not the input's: permissions, a full disk
        where = f": {error.filename}" if error.filename else ""
        print(f"neuronpath: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "neuronpath: interrupted; finished images are saved, re-run the same command to resume",
            file=sys.stderr,
        )
        return 130
    except Exception:  # noqa: BLE001 - anything else is a bug: its traceback, and say so
        traceback.print_exc()
        print(BUG, file=sys.stderr)
        return 1
    finally:
        leave_ranks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
