"""``neuronpath evaluate``: removal / enhancement of every stored path, metrics, Table 1, Fig. 3.

Reads a ``find`` run, re-runs its model on its images with each method's path neurons
removed (x0) and enhanced (x2) at every layer at once, plus the registered controls (the
random path: one random neuron per layer per image, seeded), and writes into
``RUN_DIR/evaluation/``:

* ``manifest.json`` + ``records.jsonl`` -- one record per image and method (resumable like find);
* ``metrics.json`` -- every number (see :mod:`neuronpath.analysis.deviations`);
* ``table.md`` / ``table.csv`` -- the Table-1 layout for this run;
* ``figure3.png`` / ``figure3.svg`` -- box plots of the probability deviation.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..analysis.deviations import all_metrics, class_mean_deviations
from ..analysis.records import group_by
from ..engine.editing import OPS, manipulate
from ..errors import InputError, RunFormatError, option
from ..io.images import ImageItem
from ..io.sources import Reader
from ..io.store import read_records, write_json_atomic
from ..methods import CONTROLS
from ..options import names, nested, setting
from ..report.figures import probability_deviation_figure
from ..report.tables import write_table
from .common import PASS_BATCH, Execution, path_fields, path_tensor, resolve_device, versions
from .curves import check_curves, run_curves
from .faithfulness import FaithfulnessOptions, check_study, run_faithfulness
from .ranks import join_ranks, open_store, work_through
from .run import Run

log = logging.getLogger("neuronpath")


@dataclass(frozen=True)
class EditOptions:
    """What every edited-forward experiment on a find run (``evaluate``, ``--causal``) takes
    besides its own settings: where the run's model and images are now (None: where the run
    recorded them; the weights and preprocessing are checked), the controls compared with the
    paths (names from :data:`~neuronpath.methods.CONTROLS`), their seed and the bootstrap
    resamples of every interval."""

    model: str | None = setting(None, "the run's model, if it moved (its weights are checked)")
    data: str | Path | None = setting(None, "the run's image folder, if it moved")
    controls: tuple[str, ...] = setting(("random",), cli=False)
    seed: int = setting(0, "seed of the controls", type=int)
    bootstrap: int = setting(
        1000, "bootstrap resamples for confidence intervals (0: no intervals)", type=int
    )

    def __post_init__(self):
        controls = tuple(dict.fromkeys(self.controls))
        drawn = [name for name, c in CONTROLS.items() if c.path is not None]
        unknown = [c for c in controls if c not in drawn]
        if unknown:
            raise InputError(
                f"{option('controls')}: unknown {unknown}; expected some of {', '.join(drawn)}"
            )
        object.__setattr__(self, "controls", controls)
        if self.bootstrap < 0:
            raise InputError(
                f"{option('bootstrap')}: expected a number of resamples >= 0, got {self.bootstrap}"
            )


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``evaluate`` measures besides the edits' common options: the operations of Table 1,
    whether the random control is drawn, and the causal checks (:mod:`.causal`)."""

    ops: tuple[str, ...] = setting(tuple(OPS), "comma-separated operations", parse=names)
    no_random: bool = setting(False, "skip the random-path control")
    causal: bool = setting(
        False,
        "also the causal checks: each path removed whole, each layer's path neuron removed "
        "alone, only the path kept (RUN/causal/)",
    )
    curves: bool = setting(
        False,
        "MIB's faithfulness curves over each method's whole ranking (a run found with "
        "--save-scores): per layer the top k % of units kept, every other unit ablated by "
        "each --ablation; CPR and CMD (RUN/evaluation/curves.*); the faithfulness options "
        "then configure the curves, and the study itself is not run",
    )


@dataclass(frozen=True)
class EvaluateCommand:
    """remove (x0) / enhance (x2) every stored path's neurons: Table 1 and Fig. 3 for one
    run; with any faithfulness option, the faithfulness study"""

    run: str = setting(None, "run folder written by find", positional=True)
    edit: EditOptions = nested(EditOptions)
    options: EvaluateOptions = nested(EvaluateOptions)
    study: FaithfulnessOptions | None = nested(
        FaithfulnessOptions,
        "faithfulness study (any of these options runs it; RUN/evaluation/faithfulness.*)",
        optional=True,
    )
    execution: Execution = nested(Execution, "how it runs", defaults={"batch_size": PASS_BATCH})

    @property
    def edit_options(self) -> EditOptions:
        """The edits' options, the random control left out with ``--no-random``."""
        return replace(self.edit, controls=()) if self.options.no_random else self.edit


@dataclass
class StoredPaths:
    """A finished find run (``find``, a :class:`~.run.Run`) ready for edited forwards: its
    model (checked by weights hash), its images, and per batch every method's stored paths
    plus the controls' seeded paths."""

    run_dir: Path
    find: Run
    by_image: dict[str, dict[str, dict]]
    adapter: object
    ranks: object
    reader: Reader
    options: EditOptions
    excluded: frozenset[str] = frozenset()  # images kept out of the evaluated set (a reference)

    @classmethod
    def open(cls, run_dir: str | Path, options: EditOptions, device: str) -> "StoredPaths":
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise RunFormatError(f"{run_dir}: no such run folder")
        find = Run.open(run_dir)
        by_image = {
            image: {r["method"]: r for r in rows}
            for image, rows in group_by(find.records(), "image").items()
        }
        find.check_complete(by_image)
        ranks = join_ranks(resolve_device(device))
        adapter = find.load_model(options.model, ranks.device)
        return cls(run_dir, find, by_image, adapter, ranks, find.reader(options.data), options)

    @property
    def methods(self) -> list[str]:
        """The run's methods, then the controls."""
        return self.find.methods + list(self.options.controls)

    @property
    def find_sha(self) -> str:
        return self.find.settings_sha256

    def pending(self, store, names: list[str] | None = None) -> list[ImageItem]:
        """Evaluated images with every method's path for which ``store`` has not finished
        every one of ``names`` (default: :attr:`methods`)."""
        found, names = set(self.find.methods), set(names or self.methods)
        pending = [
            self.reader.item(i, rec[next(iter(rec))]["label"])
            for i, rec in self.by_image.items()
            if found <= set(rec)
            and i not in self.excluded
            and not names <= store.done.get(i, set())
        ]
        if pending and not any(self.reader.exists(item.id) for item in pending):
            raise RunFormatError(
                f"none of the run's {len(pending)} images to do is under "
                f"{self.reader}; pass {option('data', 'DIR')} with the run's "
                f"image folder"
            )
        return pending

    def paths(self, images: list[str], controls=None) -> dict[str, torch.Tensor]:
        """{method: stored paths as recorded, (images, layers) or (images, layers, K)}, and each
        control's (images, layers, K) (``controls``: default the options')."""
        layers = self.adapter.num_layers
        paths = {
            m: path_tensor([self.by_image[i][m] for i in images], self.adapter)
            for m in self.find.methods
        }
        k = next(iter(paths.values())).reshape(len(images), layers, -1).shape[-1]
        widths = self.find.widths or self.adapter.widths()
        blocks = self.adapter.blocks if self.adapter.unit_set == "neurons+heads" else None
        for name in self.options.controls if controls is None else controls:
            paths[name] = torch.stack(
                [
                    CONTROLS[name].path(i, self.options.seed, layers, widths, k, blocks)
                    for i in images
                ]
            )
        return paths

    def inputs(self, batch) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """(pixels on the device, image ids, labels) of a batch's images."""
        return (
            batch.pixels.to(self.ranks.device, non_blocking=True),
            [it.id for it in batch.items],
            torch.tensor([it.label for it in batch.items]),
        )

    def jas(self, image: str, method: str) -> float | None:
        return self.by_image[image][method]["jas"] if method in self.by_image[image] else None

    def work_through(
        self, store, pending: list[ImageItem], execution: Execution, handle, desc: str
    ) -> None:
        """``handle`` every pending image's batch, shared among the ranks
        (:func:`.ranks.work_through`), the records kept in the run's image order."""
        order = list(self.by_image)
        work_through(
            self.ranks, store, pending, self.adapter.preprocess, execution, handle, order, desc
        )

    def manifest_for(self, tool: str, settings: dict) -> dict:
        return {
            "tool": tool,
            "settings": {"find_settings_sha256": self.find_sha, **settings},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }


def run_evaluate(
    run_dir: str | Path,
    *,
    ops: Sequence[str] = tuple(OPS),
    options: EditOptions = EditOptions(),
    faithfulness: FaithfulnessOptions | None = None,
    curves: bool = False,
    execution: Execution = Execution.forwards(),
) -> dict | None:
    """Evaluate a find run (resumable): every stored path and every control of ``options``
    under each of ``ops`` (the paper's Table 1), and with ``faithfulness`` the faithfulness
    study (:mod:`.faithfulness`); with ``curves`` MIB's curves instead of the study
    (:mod:`.curves`, the study's options configure them).  Returns the Table 1 metrics (None
    on the other ranks of a ``torchrun`` job, which share the images)."""
    ops = list(dict.fromkeys(ops))
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise InputError(f"{option('ops')}: unknown {unknown}; expected some of {list(OPS)}")
    run = StoredPaths.open(run_dir, options, execution.device)
    if curves:
        check_curves(run)
        faithfulness = faithfulness or FaithfulnessOptions(controls=())
    study_excluded = check_study(run, faithfulness) if faithfulness is not None else None
    methods, seed = run.methods, options.seed
    settings = {
        "ops": ops,
        "seed": seed,
        "methods": methods,
        "factors": {op: OPS[op] for op in ops},
    }
    store = open_store(
        run.ranks, run.run_dir / "evaluation", run.manifest_for("neuronpath evaluate", settings)
    )
    pending = run.pending(store)
    log.info("evaluate: %d images, %d to do -> %s", len(run.by_image), len(pending), store.dir)

    def handle(batch):
        pixels, images, labels = run.inputs(batch)
        paths = run.paths(images)
        result = manipulate(run.adapter, pixels, labels, paths, ops)
        records = []
        for row, image in enumerate(images):
            for m in methods:
                record = {
                    "image": image,
                    "label": int(labels[row]),
                    "method": m,
                    **path_fields(paths[m][row], run.adapter),
                    "jas": run.jas(image, m),
                    "base_prob": float(result["base_prob"][row]),
                    "base_pred": int(result["base_pred"][row]),
                }
                for op in ops:
                    record[f"{op}_prob"] = float(result[f"{m}:{op}_prob"][row])
                    record[f"{op}_pred"] = int(result[f"{m}:{op}_pred"][row])
                records.append(record)
        store.append(records)

    run.work_through(store, pending, execution, handle, "remove/enhance")
    metrics = write_outputs(run.run_dir, ops, options.bootstrap, seed) if run.ranks.main else None
    if faithfulness is not None:  # a reference split is kept out of the study, not of Table 1
        run.excluded = study_excluded
        if curves:
            run_curves(run, faithfulness, execution)
        else:
            run_faithfulness(run, faithfulness, execution)
    return metrics


def write_outputs(run_dir: Path, ops: Sequence[str], bootstrap: int, seed: int) -> dict:
    """metrics.json, table.md/csv and figure3.png/svg from the evaluation records."""
    out = run_dir / "evaluation"
    records = read_records(out)
    metrics = all_metrics(records, ops, bootstrap, seed)
    name = Run.open(run_dir).model_id
    write_json_atomic(
        out / "metrics.json",
        {"model": name, "ops": list(ops), "bootstrap": bootstrap, "methods": metrics},
    )
    write_table({Path(name).name or name: metrics}, out / "table")
    deviations = {
        op: {m: class_mean_deviations(rows, op) for m, rows in group_by(records).items()}
        for op in ops
    }
    probability_deviation_figure(deviations, out / "figure3", title=Path(name).name or name)
    return metrics
