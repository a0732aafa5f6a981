"""Command line: argparse only.  Each subcommand parses its options, calls one experiment
function from :mod:`neuronpath.experiments` and prints what it wrote.

The flags of the model spec and of every path method's options are built from their
dataclasses (:class:`~neuronpath.models.spec.ModelSpec`, each method's options class in
:mod:`neuronpath.methods`), so a new option is written once, next to what it configures.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import traceback
from pathlib import Path

from .analysis.pruning import AGGREGATES, PruneSettings
from .engine.attribution import OBJECTIVES, TARGETS, AttributionConfig
from .engine.editing import OPS
from .engine.grids import GRIDS, PRESETS
from .engine.slimming import SlimOptions
from .errors import InputError, NeuronpathError, command_line_options
from .experiments.causal import run_causal
from .experiments.classes import ClassesOptions, run_classes
from .experiments.common import Execution, parse_bytes
from .experiments.evaluate import EditOptions, run_evaluate
from .experiments.faithfulness import FaithfulnessOptions
from .experiments.find import run_find
from .experiments.neurons import AtlasOptions, run_neurons
from .experiments.prune import DEFAULT_KEEP_RULES, run_prune
from .experiments.ranks import leave_ranks
from .experiments.report import run_report
from .experiments.summary import summary_text
from .experiments.table import run_table
from .io.sources import DataSpec
from .methods import CONTROLS, DEFAULT_METHODS, REGISTRY
from .models.demo import demo_data_dir, demo_model_dir
from .models.spec import DEMO, ModelSpec
from .report.text import format_class_report

log = logging.getLogger("neuronpath")

BUG = (
    "neuronpath: this is a bug in neuronpath, not a problem with your input; please report "
    "it with the traceback above"
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_fields(group, cls, skip: tuple[str, ...] = (), given_only: bool = False) -> None:
    """One flag per field of the dataclass ``cls`` (its metadata: ``help``, ``choices``,
    ``type``); ``given_only``: the default is None, meaning "not given"."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        meta = dict(f.metadata)
        default = None if given_only else f.default
        if isinstance(f.default, bool):
            group.add_argument(
                _flag(f.name),
                action="store_true",
                default=None if given_only else False,
                help=meta.get("help"),
            )
            continue
        kwargs = {"help": meta.get("help"), "default": default}
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        if "type" in meta:
            kwargs["type"] = meta["type"]
        group.add_argument(_flag(f.name), **kwargs)


def _given(args, cls) -> dict:
    """The fields of ``cls`` given on the command line (not None)."""
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)
        if getattr(args, f.name, None) is not None
    }


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of methods; got {text!r}"
        )
    return methods


def _add_method_options(p: argparse.ArgumentParser) -> None:
    """Each registered method's options, one group per method."""
    for method in REGISTRY.values():
        if dataclasses.fields(method.options):
            _add_fields(
                p.add_argument_group(f"{method.name} options"), method.options, given_only=True
            )


def _method_options(args, methods: list[str]) -> dict:
    """``{method: options}`` for the chosen methods (controls pass through as None), from
    their flags; a flag of a method that is not chosen is refused (it would do nothing)."""
    chosen = {}
    for name in methods:
        method = REGISTRY.get(name)
        chosen[name] = None if method is None else method.options(**_given(args, method.options))
    for method in REGISTRY.values():
        if method.name not in methods:
            for key in _given(args, method.options):
                raise InputError(
                    f"{_flag(key)}: an option of method {method.name}, which is not "
                    f"among {_flag('methods')} {','.join(methods)}"
                )
    return chosen


def _add_search_options(p: argparse.ArgumentParser, methods_default, methods_help: str) -> None:
    p.add_argument("--methods", type=_methods, default=None, help=methods_help)
    p.set_defaults(default_methods=list(methods_default))
    p.add_argument("--steps", type=int, help="alpha steps m (default: 20)")
    p.add_argument(
        "--alphas",
        choices=GRIDS,
        help="alpha grid (default: left); 'left' = official code (k/m, k=0..m-1), 'right' = Eq. 3",
    )
    rule, steps = PRESETS["fast"]
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"--alphas {rule} --steps {steps}: half the official grid's cost, and closer to the "
        "converged integral (its paths on 100 of 100 images of the shared model, where the "
        "official grid kept 92: docs/results/imagenet20-vit-s12/alphas.md); not the official "
        "grid, so paths and JAS are not the paper's to the last digit",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="label",
        help="class whose F is attributed: ground-truth label (official) or prediction",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default="prob",
        help="F: softmax probability (official) or logit",
    )
    p.add_argument(
        "--memory-budget",
        default="2GiB",
        help="saved activations per chunk of rows (default: 2GiB)",
    )
    _add_method_options(p)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """A flat folder's labels file, a dataset's columns (the data spec, but for ``--data``)."""
    _add_fields(p.add_argument_group("data options"), DataSpec, skip=("data",))


def _data(args, data) -> DataSpec:
    return DataSpec(data, **{k: v for k, v in _given(args, DataSpec).items() if k != "data"})


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """How the model is loaded and what it is shown (the model spec, but for ``--model``)."""
    _add_fields(p.add_argument_group("model options"), ModelSpec, skip=("model",))


def _add_execution_options(p: argparse.ArgumentParser, batch_size: int) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"images per batch (default: {batch_size})",
    )
    p.add_argument(
        "--workers",
        type=int,
        help="processes decoding images in the background "
        "(default: 0 on a CPU, up to 4 beside a GPU)",
    )


def _add_find_options(p: argparse.ArgumentParser) -> None:
    _add_search_options(
        p,
        DEFAULT_METHODS,
        "comma-separated path methods (default: "
        "jas,activation): " + "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values()),
    )
    p.add_argument(
        "--topk", type=int, default=1, help="neurons per layer (TopK path, App. E.1); default 1"
    )
    p.add_argument("--limit", type=int, help="at most N images, taken round-robin over classes")
    _add_model_options(p)
    _add_execution_options(p, 8)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuronpath",
        description=("Influential neuron paths in vision Transformers (Wang et al., ICLR 2025)."),
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    find = sub.add_parser("find", help="find neuron paths for every image of a folder")
    find.add_argument(
        "--model",
        help="HF model folder, hub id, Google .npz, MAE .pth or "
        f"timm:NAME (default: the built-in {DEMO})",
    )
    find.add_argument(
        "--data",
        help="ImageFolder (one sub-folder per class), a flat folder with --labels-file, or "
        "hf:PATH_OR_ID[:SPLIT] (default: the built-in digits test set)",
    )
    find.add_argument("--out", help="run folder (resumable); default: neuronpath-demo for the demo")
    _add_data_options(find)
    _add_find_options(find)

    demo = sub.add_parser(
        "demo", help="run find on the built-in digits ViT (no network) and print a summary"
    )
    demo.add_argument("--out", default="neuronpath-demo", help="run folder (default: %(default)s)")
    demo.add_argument(
        "--retrain",
        action="store_true",
        help="train the demo ViT here instead of using the shipped weights (its figures then "
        "depend on this machine)",
    )
    _add_find_options(demo)

    summary = sub.add_parser("summary", help="print per-method statistics of a run")
    summary.add_argument("run", help="run folder written by find")

    evaluate = sub.add_parser(
        "evaluate",
        help="remove (x0) / enhance (x2) every stored path's "
        "neurons: Table 1 and Fig. 3 for one run",
    )
    evaluate.add_argument("run", help="run folder written by find")
    evaluate.add_argument(
        "--ops",
        type=_ops,
        default=list(OPS),
        help="comma-separated operations (default: remove,enhance)",
    )
    evaluate.add_argument("--model", help="the run's model, if it moved (its weights are checked)")
    evaluate.add_argument("--data", help="the run's image folder, if it moved")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the controls")
    evaluate.add_argument("--no-random", action="store_true", help="skip the random-path control")
    evaluate.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples for confidence intervals (default: 1000; 0: no intervals)",
    )
    study = evaluate.add_argument_group(
        "faithfulness study (any of these options runs it; RUN/evaluation/faithfulness.*)"
    )
    study.add_argument(
        "--ablation",
        type=_names,
        help="comma-separated ablations of path neurons: zero (the paper's), mean "
        "(a reference set's mean at the same positions), resample (another "
        "image's values, of another class, seeded); default zero",
    )
    study.add_argument(
        "--metrics",
        type=_names,
        help="comma-separated metrics reported: prob (default), logit, logit-diff "
        "(target logit minus the strongest other class's), kl",
    )
    study.add_argument(
        "--controls",
        type=_names,
        help="comma-separated controls: random, matched-random (for every method's "
        "path, per path neuron a random neuron of its layer at the same activation level "
        "on the image); default random, plus matched-random with a reference set",
    )
    study.add_argument(
        "--reference",
        help="folder of reference images (mean ablation; the matched control's "
        "bins with --match bins); not the run's images",
    )
    study.add_argument(
        "--reference-split",
        type=int,
        help="or: N of the run's own images as the reference, kept out of the "
        "evaluated set (class-balanced, seeded)",
    )
    study.add_argument(
        "--allow-overlap",
        action="store_true",
        help="accept a --reference folder that holds images of the run",
    )
    study.add_argument(
        "--enhance-factor",
        type=float,
        default=2.0,
        help="enhancement multiplies path neurons by this (default: 2)",
    )
    study.add_argument(
        "--matched-seeds",
        type=int,
        default=3,
        help="matched-random paths per image, pooled (default: 3)",
    )
    study.add_argument(
        "--match",
        choices=("nearest", "bins"),
        default="nearest",
        help="how the matched control matches a path neuron's level on the image: nearest "
        "(default; drawn among the --match-window neurons of its layer nearest in level) "
        "or bins (in its quantile bin of the reference set's levels, --bins)",
    )
    study.add_argument(
        "--match-window",
        type=int,
        default=8,
        help="--match nearest: the partner is drawn among this many nearest levels (default: 8)",
    )
    study.add_argument(
        "--bins",
        type=int,
        default=10,
        help="--match bins: activation-level quantile bins of the matched control (default: 10)",
    )
    evaluate.add_argument(
        "--causal",
        action="store_true",
        help="also the causal checks: each path removed whole, each layer's "
        "path neuron removed alone, only the path kept (RUN/causal/)",
    )
    _add_execution_options(evaluate, 16)

    classes = sub.add_parser(
        "classes",
        help="class-level neuron statistics, utilisation "
        "matrices, class similarity, Figures 2, 4 and 5",
    )
    classes.add_argument("run", help="run folder written by find")
    classes.add_argument("--method", default="jas", help="whose paths (default: jas)")
    classes.add_argument("--out", help="output folder (default: RUN/classes-METHOD)")
    classes.add_argument(
        "--plot-classes", help="comma-separated classes for Figure 4 (default: the first 4)"
    )
    classes.add_argument("--classes", dest="old_plot_classes", help=argparse.SUPPRESS)
    classes.add_argument(
        "--groups", help="file assigning classes to groups (class<TAB>group) for the coherence test"
    )
    classes.add_argument("--class-names", help="file mapping class labels to readable names")
    classes.add_argument(
        "--kde-mode",
        action="store_true",
        help="Figure 4 line at the Gaussian-KDE mode (official) instead of the "
        "exact most used neuron",
    )
    classes.add_argument(
        "--fraction",
        type=float,
        default=0.05,
        help="share of most / least similar classes listed (default: 0.05)",
    )
    classes.add_argument("--permutations", type=int, default=10000)
    classes.add_argument("--panel-class", help="class shown in Figure 5 (default: the first)")
    classes.add_argument("--data", help="the run's image folder, if it moved (for thumbnails)")

    prune = sub.add_parser(
        "prune",
        help="class-specific pruning guided by TopK paths: Figure 6 and the Table 3 depth ablation",
    )
    prune.add_argument("--model", required=True)
    prune.add_argument(
        "--data", required=True, help=DataSpec.__dataclass_fields__["data"].metadata["help"]
    )
    prune.add_argument("--out", required=True)
    _add_data_options(prune)
    prune.add_argument(
        "--keep",
        type=_ints,
        default=[1, 5, 10, 30, 50],
        help="kept neurons per layer (default: 1,5,10,30,50)",
    )
    prune.add_argument(
        "--mask",
        type=_floats,
        default=[0.1, 0.3, 0.5, 1.0],
        help="share of the other neurons zeroed (default: 0.1,0.3,0.5,1.0)",
    )
    prune.add_argument(
        "--depth",
        type=_ints,
        help="prune only the first d layers; several values "
        "give the Table 3 ablation (default: all)",
    )
    prune.add_argument("--probe-fraction", type=float, default=0.8)
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument(
        "--aggregate",
        choices=AGGREGATES,
        default="frequency",
        help="frequency over pooled probe selections (App. E.2) or the official "
        "per-rank-slot mode (docs/official-code.md#topk-and-pruning)",
    )
    prune.add_argument("--find-run", help="reuse a find run with TopK paths (K >= max keep)")
    prune.add_argument("--table-keep", type=int, default=5)
    prune.add_argument("--table-mask", type=float, default=1.0)
    prune.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        help="bootstrap resamples over test images (default: 1000; 0: no intervals)",
    )
    slim = prune.add_argument_group("trained baselines (Table 2)")
    slim.add_argument(
        "--baselines",
        type=_names,
        help="comma-separated keep rules trained on each class's probe images: "
        "vit-slim (ViT-Slim's soft masks on the FFN neurons, CE + L1)",
    )
    slim.add_argument(
        "--slim-steps",
        type=int,
        default=SlimOptions.steps,
        help=f"vit-slim: Adam steps (default: {SlimOptions.steps})",
    )
    slim.add_argument(
        "--slim-lr",
        type=float,
        default=SlimOptions.lr,
        help=f"vit-slim: learning rate (default: {SlimOptions.lr})",
    )
    slim.add_argument(
        "--slim-lambda",
        type=float,
        default=SlimOptions.l1,
        help=f"vit-slim: weight of the L1 term (default: {SlimOptions.l1})",
    )
    _add_search_options(
        prune,
        DEFAULT_KEEP_RULES,
        "comma-separated keep rules: path methods ("
        + ", ".join(REGISTRY)
        + ") and controls ("
        + ", ".join(n for n, c in CONTROLS.items() if c.keep is not None)
        + "); default: "
        + ",".join(DEFAULT_KEEP_RULES),
    )
    _add_model_options(prune)
    _add_execution_options(prune, 8)

    report = sub.add_parser(
        "report",
        help="one self-contained web page for a run: overview, path explorer, neuron cards",
    )
    report.add_argument("run", help="run folder written by find (or by prune)")
    report.add_argument("--out", help="the page (default: RUN/report/index.html)")
    report.add_argument(
        "--images",
        type=int,
        default=200,
        help="images with thumbnails, activations and maps (default: 200)",
    )
    report.add_argument("--method", default="jas", help="whose paths make the neuron cards")
    report.add_argument("--cards", type=int, default=48, help="neuron cards (default: 48)")
    report.add_argument("--model", help="the run's model, if it moved (its weights are checked)")
    report.add_argument("--data", help="the run's image folder, if it moved")
    report.add_argument("--class-names", help="file mapping class labels to readable names")
    _add_execution_options(report, 16)

    neurons = sub.add_parser(
        "neurons",
        help="a neuron atlas: each path unit's top and bottom images over an image folder, its "
        "statistics, and text labels for zero-shot CLIP / SigLIP",
    )
    neurons.add_argument("run", nargs="?", help="find run whose path units to describe")
    neurons.add_argument(
        "--data", required=True, help=DataSpec.__dataclass_fields__["data"].metadata["help"]
    )
    _add_data_options(neurons)
    neurons.add_argument("--out", help="atlas folder (default: RUN/neurons)")
    neurons.add_argument("--model", help="without a run: the model whose --units to describe")
    neurons.add_argument(
        "--units", help="without a run: LAYER:INDEX (a neuron) or LAYER:hINDEX (a head), ..."
    )
    neurons.add_argument(
        "--methods", type=_methods, help="whose paths' units (default: every method of the run)"
    )
    neurons.add_argument("--layers", type=_ints, help="every unit of these layers instead")
    neurons.add_argument("--limit", type=int, help="at most N images, round-robin over classes")
    neurons.add_argument(
        "--vocabulary", help="text labels from one word or phrase per line (zero-shot models)"
    )
    for name, default, what in (
        ("top", AtlasOptions.top, "top images per unit"),
        ("bottom", AtlasOptions.bottom, "bottom images per unit"),
        ("sample", AtlasOptions.sample, "images whose values give quantiles and histograms"),
        ("labels", AtlasOptions.labels, "text labels per unit"),
    ):
        neurons.add_argument(
            f"--{name}", type=int, default=default, help=f"{what} (default: {default})"
        )
    _add_execution_options(neurons, 16)

    table = sub.add_parser("table", help="merge evaluated runs (one per model) into one Table 1")
    table.add_argument("runs", nargs="+", help="evaluated run folders")
    table.add_argument("--out", required=True, help="output stem: writes STEM.md and STEM.csv")
    table.add_argument("--names", help="comma-separated column names (default: model ids)")
    return parser


def _numbers(cast, what: str):
    """An argparse type: comma-separated values of ``cast`` (``what`` names them)."""

    def parse(text: str) -> list:
        try:
            return [cast(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return parse


_ints, _floats = _numbers(int, "integers"), _numbers(float, "numbers")


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _ops(text: str) -> list[str]:
    ops = [o.strip() for o in text.split(",") if o.strip()]
    if not ops or any(o not in OPS for o in ops):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(OPS)}")
    return ops


def _pick(args, *names: str) -> dict:
    """``{name: args.name}`` for the parsed options ``names``."""
    return {name: getattr(args, name) for name in names}


def _execution(args) -> Execution:
    return Execution(args.device, args.batch_size, getattr(args, "workers", None))


def _grid(args) -> dict:
    """``alphas`` and ``steps``: given, the ``--fast`` preset's, or the official 'left', 20."""
    if not args.fast:
        return {"alphas": args.alphas or "left", "steps": 20 if args.steps is None else args.steps}
    given = [f"--{name}" for name in ("alphas", "steps") if getattr(args, name) is not None]
    if given:
        rule, steps = PRESETS["fast"]
        raise InputError(
            f"--fast sets --alphas {rule} --steps {steps}; give either --fast or "
            f"{' and '.join(given)}, not both"
        )
    return dict(zip(("alphas", "steps"), PRESETS["fast"]))


def _config(args) -> AttributionConfig:
    budget = parse_bytes(args.memory_budget)
    return AttributionConfig(
        **_grid(args), **_pick(args, "target", "objective"), memory_budget=budget
    )


def _spec(args, model: str) -> ModelSpec:
    return ModelSpec(model, **{k: v for k, v in _given(args, ModelSpec).items() if k != "model"})


def _faithfulness(args) -> FaithfulnessOptions | None:
    """The faithfulness study's options, if any of them was given."""
    asked = ("ablation", "metrics", "controls", "reference", "reference_split")
    if all(getattr(args, name) is None for name in asked):
        return None
    chosen = _pick(
        args,
        "reference",
        "reference_split",
        "allow_overlap",
        "enhance_factor",
        "matched_seeds",
        "match",
        "match_window",
        "bins",
    )
    controls = args.controls or ["random"] + (
        ["matched-random"] if args.reference or args.reference_split else []
    )
    return FaithfulnessOptions(
        ablations=tuple(args.ablation or ["zero"]),
        metrics=tuple(args.metrics or ["prob"]),
        controls=tuple(controls),
        **chosen,
    )


def _find(args) -> Path:
    model, data, out = getattr(args, "model", None), getattr(args, "data", None), args.out
    if model is None and data is None:
        model, data, out = DEMO, demo_data_dir() / "test", out or "neuronpath-demo"
        if getattr(args, "retrain", False):
            model = str(demo_model_dir(retrain=True))
    if model is None or data is None or out is None:
        raise InputError(
            "find: give --model, --data and --out (or none of --model/--data for the built-in demo)"
        )
    spec, config = _spec(args, model), _config(args)
    if args.methods is None:  # the defaults that are defined for the paths' units
        args.methods = [m for m in args.default_methods if spec.units in REGISTRY[m].units]
        left = [m for m in args.default_methods if m not in args.methods]
        if left:
            log.info(
                "find: %s paths: %s (not defined for them) left out of the default methods",
                spec.units,
                ", ".join(left),
            )
    unknown = [m for m in args.methods if m not in REGISTRY]
    if unknown:
        raise InputError(f"--methods: unknown {unknown}; expected some of {', '.join(REGISTRY)}")
    methods, execution = _method_options(args, args.methods), _execution(args)
    run = {"topk": args.topk, "limit": args.limit, "execution": execution, "command": sys.argv}
    return run_find(spec, _data(args, data), out, methods=methods, config=config, **run)


def _prune(args) -> dict | None:
    args.methods = args.default_methods if args.methods is None else args.methods
    unknown = [m for m in args.methods if m not in REGISTRY and m not in CONTROLS]
    if unknown:
        raise InputError(
            f"--methods: unknown {unknown}; expected some of {', '.join([*REGISTRY, *CONTROLS])}"
        )
    settings = PruneSettings(**_pick(args, *(f.name for f in dataclasses.fields(PruneSettings))))
    methods, execution = _method_options(args, args.methods), _execution(args)
    run = {"find_run": args.find_run, "execution": execution, "command": sys.argv}
    spec = _spec(args, args.model)
    run["slim"] = SlimOptions(args.slim_steps, args.slim_lr, args.slim_lambda)
    return run_prune(
        spec,
        _data(args, args.data),
        args.out,
        settings,
        methods=methods,
        config=_config(args),
        **run,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        format="neuronpath: %(message)s", level=logging.WARNING if args.quiet else logging.INFO
    )
    try:
        with command_line_options():
            _run(args, main_rank=int(os.environ.get("RANK", "0")) == 0)
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


def _run(args, main_rank: bool = True) -> None:
    """Run the command; under torchrun only the main rank prints."""
    if args.command in ("find", "demo"):
        run_dir = _find(args)
        if not main_rank:
            return
        print(f"records: {run_dir / 'records.jsonl'}")
        if args.command == "demo":
            print(summary_text(run_dir))
    elif args.command == "evaluate":
        study = _faithfulness(args)
        controls = () if args.no_random else ("random",)
        options = EditOptions(
            **_pick(args, "model", "data", "seed", "bootstrap"), controls=controls
        )
        common = {"options": options, "execution": _execution(args)}
        metrics = run_evaluate(args.run, ops=args.ops, faithfulness=study, **common)
        causal = run_causal(args.run, **common) if args.causal else None
        if metrics is None:  # another rank of a torchrun job
            return
        out = Path(args.run) / "evaluation"
        print((out / "table.md").read_text())
        print(f"wrote {out / 'metrics.json'}, {out / 'table.md'}, {out / 'figure3.png'}")
        if study is not None:
            print((out / "faithfulness.md").read_text())
            print(
                f"wrote {out / 'faithfulness.csv'}, {out / 'faithfulness.md'}, "
                f"{out / 'faithfulness.png'}"
            )
        if causal is not None:
            folder = Path(args.run) / "causal"
            print((folder / "causal.md").read_text())
            print(
                f"wrote {folder / 'metrics.json'}, {folder / 'causal.md'}, {folder / 'layers.png'}"
            )
    elif args.command == "report":
        chosen = _pick(args, "out", "images", "method", "cards", "model", "data", "class_names")
        page = run_report(args.run, **chosen, execution=_execution(args))
        if page is not None:
            print(f"wrote {page}")
    elif args.command == "neurons":
        options = AtlasOptions(**_pick(args, "top", "bottom", "sample", "labels"))
        chosen = _pick(args, "units", "methods", "layers", "out", "vocabulary", "limit")
        if args.run is None and args.model is None:
            raise InputError("neurons: give a find run, or --model M with --units L:I,...")
        spec = ModelSpec(args.model) if args.model else None
        where = run_neurons(
            _data(args, args.data),
            run_dir=args.run,
            spec=spec,
            options=options,
            execution=_execution(args),
            **chosen,
        )
        if where is not None:
            print(f"wrote {where / 'atlas.npz'}, {where / 'top.csv'}")
    elif args.command == "table":
        for path in run_table(args.runs, args.out, args.names.split(",") if args.names else None):
            print(f"wrote {path}")
    elif args.command == "prune":
        if _prune(args) is None:
            return
        print((Path(args.out) / "table3.md").read_text())
        print(f"wrote {Path(args.out) / 'results.json'}, figure6.png, table3.md")
    elif args.command == "classes":
        plot = args.plot_classes
        if args.old_plot_classes is not None:
            print(
                "neuronpath: --classes is now --plot-classes (the old name will go)",
                file=sys.stderr,
            )
            plot = plot or args.old_plot_classes
        options = ClassesOptions(**_pick(args, "fraction", "permutations"), kde=args.kde_mode)
        chosen = _pick(args, "method", "out", "panel_class", "groups", "class_names", "data")
        plot = plot.split(",") if plot else None
        report = run_classes(args.run, plot_classes=plot, options=options, **chosen)
        print(format_class_report(report))
    else:
        print(summary_text(args.run))


if __name__ == "__main__":
    sys.exit(main())
