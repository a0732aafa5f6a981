"""Command line: argparse only.  Each subcommand parses its options, calls one experiment
function from :mod:`neuronpath.experiments` and prints what it wrote."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .analysis.pruning import AGGREGATES
from .engine.attribution import OBJECTIVES, TARGETS
from .engine.editing import OPS
from .engine.grids import GRIDS
from .errors import NeuronpathError, command_line_options
from .experiments.causal import run_causal
from .experiments.classes import run_classes
from .experiments.common import DTYPES
from .experiments.evaluate import run_evaluate
from .experiments.find import run_find
from .experiments.prune import run_prune
from .experiments.ranks import leave_ranks
from .experiments.report import run_report
from .experiments.summary import summary_text
from .experiments.table import run_table
from .io.labels import LABEL_MAPPINGS
from .methods import DEFAULT_METHODS, REGISTRY, TOPK_MODES
from .methods.base import parse_rerank
from .models.demo import demo_data_dir
from .models.loading import DEMO, PREPROCESS_CHOICES
from .report.text import format_class_report

log = logging.getLogger("neuronpath")

# Expected failures of a user's input: the library raises them with a message naming the input
# (a parameter, a file, a folder); each becomes one line on stderr.  Anything else is a bug and
# keeps its traceback.
ERRORS = (ValueError, OSError, NeuronpathError)


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or any(m not in REGISTRY for m in methods):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of "
                                         f"{', '.join(REGISTRY)}; got {text!r}")
    return methods


def _add_find_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=_methods, default=list(DEFAULT_METHODS),
                   help="comma-separated path methods (default: jas,activation): "
                        + "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values()))
    p.add_argument("--topk", type=int, default=1,
                   help="neurons per layer (TopK path, App. E.1); default 1")
    p.add_argument("--topk-mode", choices=TOPK_MODES, default="all",
                   help="all: every earlier TopK neuron enters the score (Alg. 3); official: "
                        "only the K-th does (the released code's bug, spec §8)")
    p.add_argument("--rerank", type=_rerank, default=0,
                   help="jas: re-score the search's best C candidates exactly, JAS(P + {w}) "
                        "(Alg. 1 as written); 'all' scores every neuron; 0 (default) keeps the "
                        "official whole-layer scoring")
    p.add_argument("--steps", type=int, default=20, help="alpha steps m (default: 20)")
    p.add_argument("--alphas", choices=GRIDS, default="left",
                   help="alpha grid; 'left' = official code (k/m, k=0..m-1), 'right' = Eq. 3")
    p.add_argument("--target", choices=TARGETS, default="label",
                   help="class whose F is attributed: ground-truth label (official) or prediction")
    p.add_argument("--objective", choices=OBJECTIVES, default="prob",
                   help="F: softmax probability (official) or logit")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    p.add_argument("--limit", type=int, help="at most N images, taken round-robin over classes")
    _add_model_options(p)
    p.add_argument("--memory-budget", default="2GiB",
                   help="saved activations per chunk of rows (default: 2GiB)")
    _add_workers_option(p)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """How the model is loaded and what it is shown: shared by find and prune."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="float32/float64 convert the model; tf32: float32 with TF32 matmuls "
                        "(CUDA); bfloat16/float16 run it under autocast (see the README on "
                        "when reduced precision is safe)")
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default="model",
                   help="the model's own processor config, or the official code's (spec §9)")
    p.add_argument("--token", help="token policy (default: where the model's head reads, e.g. "
                                   "cls for ViT, patches for mean-pooled heads, all for SigLIP and "
                                   "Swin): cls, distillation, patches[:PREFIX], all, a token index, "
                                   "or several joined by '+'")
    _add_zero_shot_options(p)
    p.add_argument("--labels", choices=LABEL_MAPPINGS, default="auto",
                   help="how class folders map to label ids (default: auto)")
    p.add_argument("--image-size", type=int,
                   help="input size for .npz/.pth checkpoints (default 224, as the official "
                        "code; position embeddings are resized when the grid differs)")
    p.add_argument("--fc-norm-twice", action="store_true",
                   help="MAE checkpoints: apply fc_norm twice, as the official code does (spec §4)")


def _add_workers_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, help="processes decoding images in the background "
                                               "(default: 0 on a CPU, up to 4 beside a GPU)")


def _add_zero_shot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", help="zero-shot CLIP / SigLIP: a file of lines 'label<TAB>class "
                                     "name' (labels are the image folder names)")
    p.add_argument("--prompt", help="zero-shot prompt template (default: 'a photo of a {}.')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuronpath", description=(
        "Influential neuron paths in vision Transformers (Wang et al., ICLR 2025)."))
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    find = sub.add_parser("find", help="find neuron paths for every image of a folder")
    find.add_argument("--model", help="HF model folder, hub id, Google .npz, MAE .pth or "
                                      f"timm:NAME (default: the built-in {DEMO})")
    find.add_argument("--data", help="ImageFolder: one sub-folder of images per class "
                                     "(default: the built-in digits test set)")
    find.add_argument("--out", help="run folder (resumable); default: neuronpath-demo for the demo")
    _add_find_options(find)

    demo = sub.add_parser("demo", help="run find on the built-in digits ViT (no network) "
                                       "and print a summary")
    demo.add_argument("--out", default="neuronpath-demo", help="run folder (default: %(default)s)")
    _add_find_options(demo)

    summary = sub.add_parser("summary", help="print per-method statistics of a run")
    summary.add_argument("run", help="run folder written by find")

    evaluate = sub.add_parser("evaluate", help="remove (x0) / enhance (x2) every stored path's "
                                               "neurons: Table 1 and Fig. 3 for one run")
    evaluate.add_argument("run", help="run folder written by find")
    evaluate.add_argument("--ops", type=_ops, default=list(OPS),
                          help="comma-separated operations (default: remove,enhance)")
    evaluate.add_argument("--model", help="the run's model, if it moved (its weights are checked)")
    evaluate.add_argument("--data", help="the run's image folder, if it moved")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the random-path control")
    evaluate.add_argument("--no-random", action="store_true", help="skip the random-path control")
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--bootstrap", type=int, default=1000,
                          help="bootstrap resamples for confidence intervals (default: 1000)")
    evaluate.add_argument("--causal", action="store_true",
                          help="also the causal checks: each path removed whole, each layer's "
                               "path neuron removed alone, only the path kept (RUN/causal/)")
    _add_workers_option(evaluate)

    classes = sub.add_parser("classes", help="class-level neuron statistics, utilisation "
                                             "matrices, class similarity, Figures 2, 4 and 5")
    classes.add_argument("run", help="run folder written by find")
    classes.add_argument("--method", default="jas", help="whose paths (default: jas)")
    classes.add_argument("--out", help="output folder (default: RUN/classes-METHOD)")
    classes.add_argument("--classes", help="comma-separated classes for Figure 4 (default: first 4)")
    classes.add_argument("--groups", help="file assigning classes to groups (class<TAB>group) "
                                          "for the coherence test")
    classes.add_argument("--class-names", help="file mapping class labels to readable names")
    classes.add_argument("--kde-mode", action="store_true",
                         help="Figure 4 line at the Gaussian-KDE mode (official) instead of the "
                              "exact most used neuron")
    classes.add_argument("--fraction", type=float, default=0.05,
                         help="share of most / least similar classes listed (default: 0.05)")
    classes.add_argument("--permutations", type=int, default=10000)
    classes.add_argument("--panel-class", help="class shown in Figure 5 (default: the first)")
    classes.add_argument("--data", help="the run's image folder, if it moved (for thumbnails)")

    prune = sub.add_parser("prune", help="class-specific pruning guided by TopK paths: "
                                         "Figure 6 and the Table 3 depth ablation")
    prune.add_argument("--model", required=True)
    prune.add_argument("--data", required=True)
    prune.add_argument("--out", required=True)
    prune.add_argument("--keep", type=_ints, default=[1, 5, 10, 30, 50],
                       help="kept neurons per layer (default: 1,5,10,30,50)")
    prune.add_argument("--mask", type=_floats, default=[0.1, 0.3, 0.5, 1.0],
                       help="share of the other neurons zeroed (default: 0.1,0.3,0.5,1.0)")
    prune.add_argument("--depth", type=_ints, help="prune only the first d layers; several values "
                                                   "give the Table 3 ablation (default: all)")
    prune.add_argument("--probe-fraction", type=float, default=0.8)
    prune.add_argument("--seed", type=int, default=0)
    prune.add_argument("--aggregate", choices=AGGREGATES, default="frequency",
                       help="frequency over pooled probe selections (App. E.2) or the official "
                            "per-rank-slot mode (spec §8)")
    prune.add_argument("--methods", default="jas,activation,random",
                       help="comma-separated from jas, activation, random")
    prune.add_argument("--find-run", help="reuse a find run with TopK paths (K >= max keep)")
    prune.add_argument("--topk-mode", choices=TOPK_MODES, default="all")
    prune.add_argument("--steps", type=int, default=20)
    prune.add_argument("--batch-size", type=int, default=8)
    prune.add_argument("--table-keep", type=int, default=5)
    prune.add_argument("--table-mask", type=float, default=1.0)
    prune.add_argument("--bootstrap", type=int, default=1000,
                       help="bootstrap resamples over test images (default: 1000)")
    _add_model_options(prune)
    _add_workers_option(prune)

    report = sub.add_parser("report", help="one self-contained web page for a run: overview, "
                                           "path explorer, neuron cards")
    report.add_argument("run", help="run folder written by find (or by prune)")
    report.add_argument("--out", help="the page (default: RUN/report/index.html)")
    report.add_argument("--images", type=int, default=200,
                        help="images with thumbnails, activations and heatmaps (default: 200)")
    report.add_argument("--method", default="jas", help="whose paths make the neuron cards")
    report.add_argument("--cards", type=int, default=48, help="neuron cards (default: 48)")
    report.add_argument("--batch-size", type=int, default=16)
    report.add_argument("--device", default="auto")
    report.add_argument("--model", help="the run's model, if it moved (its weights are checked)")
    report.add_argument("--data", help="the run's image folder, if it moved")
    report.add_argument("--class-names", help="file mapping class labels to readable names")
    _add_workers_option(report)

    table = sub.add_parser("table", help="merge evaluated runs (one per model) into one Table 1")
    table.add_argument("runs", nargs="+", help="evaluated run folders")
    table.add_argument("--out", required=True, help="output stem: writes STEM.md and STEM.csv")
    table.add_argument("--names", help="comma-separated column names (default: model ids)")
    return parser


def _rerank(text: str) -> int | str:
    try:
        return parse_rerank(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).partition(": ")[2]) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _ops(text: str) -> list[str]:
    ops = [o.strip() for o in text.split(",") if o.strip()]
    if not ops or any(o not in OPS for o in ops):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(OPS)}")
    return ops


def _find(args) -> Path:
    model, data, out = getattr(args, "model", None), getattr(args, "data", None), args.out
    if model is None and data is None:
        model, data, out = DEMO, demo_data_dir() / "test", out or "neuronpath-demo"
    if model is None or data is None or out is None:
        raise ValueError("find: give --model, --data and --out (or none of --model/--data "
                         "for the built-in demo)")
    return run_find(model, data, out, methods=args.methods, steps=args.steps,
                    alphas=args.alphas, target=args.target, objective=args.objective,
                    batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                    limit=args.limit, preprocess=args.preprocess, token=args.token,
                    labels=args.labels, memory_budget=args.memory_budget, topk=args.topk,
                    topk_mode=args.topk_mode, rerank=args.rerank, image_size=args.image_size,
                    fc_norm_twice=args.fc_norm_twice, classes=args.classes,
                    prompt=args.prompt, workers=args.workers, command=sys.argv)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="neuronpath: %(message)s",
                        level=logging.WARNING if args.quiet else logging.INFO)
    try:
        with command_line_options():
            _run(args, main_rank=int(os.environ.get("RANK", "0")) == 0)
    except ERRORS as error:
        print(f"neuronpath: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("neuronpath: interrupted; finished images are saved, re-run the same command "
              "to resume", file=sys.stderr)
        return 130
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
        common = dict(model=args.model, data=args.data, seed=args.seed,
                      random_control=not args.no_random, batch_size=args.batch_size,
                      device=args.device, bootstrap=args.bootstrap, workers=args.workers)
        metrics = run_evaluate(args.run, ops=args.ops, **common)
        causal = run_causal(args.run, **common) if args.causal else None
        if metrics is None:  # another rank of a torchrun job
            return
        out = Path(args.run) / "evaluation"
        print((out / "table.md").read_text())
        print(f"wrote {out / 'metrics.json'}, {out / 'table.md'}, {out / 'figure3.png'}")
        if causal is not None:
            folder = Path(args.run) / "causal"
            print((folder / "causal.md").read_text())
            print(f"wrote {folder / 'metrics.json'}, {folder / 'causal.md'}, "
                  f"{folder / 'layers.png'}")
    elif args.command == "report":
        page = run_report(args.run, out=args.out, images=args.images, method=args.method,
                          cards=args.cards, batch_size=args.batch_size, device=args.device,
                          model=args.model, data=args.data, class_names=args.class_names,
                          workers=args.workers)
        if page is not None:
            print(f"wrote {page}")
    elif args.command == "table":
        for path in run_table(args.runs, args.out, args.names.split(",") if args.names else None):
            print(f"wrote {path}")
    elif args.command == "prune":
        if run_prune(args.model, args.data, args.out, keep=args.keep, mask=args.mask,
                     depth=args.depth, probe_fraction=args.probe_fraction,
                     seed=args.seed, aggregate=args.aggregate,
                     methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                     find_run=args.find_run, topk_mode=args.topk_mode,
                     steps=args.steps, batch_size=args.batch_size, device=args.device,
                     table_keep=args.table_keep, table_mask=args.table_mask,
                     bootstrap=args.bootstrap, dtype=args.dtype, preprocess=args.preprocess,
                     token=args.token, labels=args.labels, image_size=args.image_size,
                     fc_norm_twice=args.fc_norm_twice, classes=args.classes,
                     prompt=args.prompt, workers=args.workers, command=sys.argv) is None:
            return
        print((Path(args.out) / "table3.md").read_text())
        print(f"wrote {Path(args.out) / 'results.json'}, figure6.png, table3.md")
    elif args.command == "classes":
        report = run_classes(args.run, method=args.method, out=args.out,
                             plot_classes=args.classes.split(",") if args.classes else None,
                             groups=args.groups, class_names=args.class_names,
                             kde=args.kde_mode, fraction=args.fraction,
                             permutations=args.permutations, panel_class=args.panel_class,
                             data=args.data)
        print(format_class_report(report))
    else:
        print(summary_text(args.run))


if __name__ == "__main__":
    sys.exit(main())
