"""A find run you can open: :class:`Run` owns the run's manifest -- read and checked once
(:func:`~neuronpath.io.store.read_find_manifest`: the file, each key every command reads, its
type) -- and answers every question a later command asks of it with a typed property: the
methods and their options, K, the units, the model's layers, widths and sites, the images
planned and skipped, the labels it knows.  It also reads the run's records and loads its model
and images.  Every command after ``find`` and the Python API open runs through it; no other
module reads a manifest's keys.

    run = Run.open("runs/vit-b16")
    run.methods, run.topk, run.units, run.num_layers
    adapter = run.load_model(device="cpu")   # the weights checked against the run's hash
    reader = run.reader()                    # the run's images, wherever they are now
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path

from ..engine.ablation import SELECTABLE
from ..errors import RunFormatError
from ..io.sources import Reader
from ..io.store import iter_records, read_find_manifest
from ..methods import selection_criteria
from ..models.loading import load_run_model
from ..pathformat import layer_units, record_units

RECORD_KEYS = {"label": int, "pred": int, "prob": (int, float), "jas": (int, float)}
SEARCH_KEYS = ("steps", "alphas", "target", "objective", "topk", "options")
FACTS = (  # the settings the page lists, in order
    "data",
    "methods",
    "steps",
    "alphas",
    "target",
    "objective",
    "token",
    "dtype",
    "topk",
    "labels",
    "classes",
    "prompt",
)


class Run:
    """A find run on disk (see the module docstring).  ``Run.open(folder)``; ``Run.of(x)``
    takes a folder or an opened run."""

    def __init__(self, folder: Path, manifest: dict):
        self.dir = Path(folder)
        self._manifest = manifest
        self._settings = manifest["settings"]
        self._model = manifest.get("model", {})

    @classmethod
    def open(cls, folder: str | Path) -> "Run":
        return cls(Path(folder), read_find_manifest(folder))

    @classmethod
    def of(cls, run: "str | Path | Run") -> "Run":
        return run if isinstance(run, Run) else cls.open(run)

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    # what was searched
    @property
    def methods(self) -> list[str]:
        return list(self._settings["methods"])

    @property
    def default_method(self) -> str:
        """The method a command reads when none is named: jas, or the run's first method when
        it has no JAS paths."""
        return "jas" if "jas" in self.methods else self.methods[0]

    @property
    def topk(self) -> int:
        return int(self._settings["topk"])

    @property
    def units(self) -> str:
        """``neurons``, ``heads`` or ``neurons+heads`` (runs made before heads: neurons)."""
        return self._settings.get("units", "neurons")

    @property
    def method_options(self) -> dict[str, dict]:
        return dict(self._settings.get("options") or {})

    @property
    def selection(self) -> dict[str, dict]:
        """``{method: the criterion it chose its path by}`` for the methods that choose by an
        intervention (:func:`~neuronpath.engine.ablation.selection_criterion`): as the run
        recorded it, or, for a run written before find recorded it, from its options."""
        recorded = self._manifest.get("selection")
        if recorded is not None:
            for name, criterion in recorded.items() if isinstance(recorded, dict) else [(0, 0)]:
                if not (
                    isinstance(criterion, dict)
                    and criterion.get("ablation") in SELECTABLE
                    and isinstance(criterion.get("metric"), str)
                ):
                    raise RunFormatError(
                        f"{self.dir / 'manifest.json'}: selection is {recorded!r}; expected "
                        f"each method's criterion (ablation one of {', '.join(SELECTABLE)}, a "
                        f"metric) (the manifest is damaged: restore it, or re-run find)"
                    )
            return recorded
        reference = self._settings.get("reference") or {}
        return selection_criteria(
            self.method_options, self._settings.get("objective", "prob"), reference.get("sha256")
        )

    @property
    def search(self) -> dict:
        """How the paths were searched: alpha grid, target, objective, K, each method's
        options."""
        return {key: self._settings.get(key) for key in SEARCH_KEYS}

    @property
    def model_id(self) -> str:
        """The model the run read, as it was given (a folder, a hub id, a checkpoint)."""
        return self._settings["model"]

    @property
    def weights_sha256(self) -> str | None:
        """The hash of the weights the run read (:meth:`ModelAdapter.weights_hash`)."""
        return self._settings.get("weights_sha256")

    @property
    def saved_scores(self) -> bool:
        """Whether find stored every method's candidate scores (``find --save-scores``)."""
        return self._settings.get("save_scores") is True

    @property
    def settings(self) -> dict:
        """Everything that identifies the run (model, images, search): what a stored result
        derived from it checks, and what :class:`~neuronpath.models.spec.ModelSpec` and
        :class:`~neuronpath.io.sources.Reader` read their own keys from."""
        return dict(self._settings)

    @cached_property
    def settings_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self._settings, sort_keys=True).encode()).hexdigest()

    # the model
    @property
    def num_layers(self) -> int:
        return int(self._model["num_layers"])

    @property
    def widths(self) -> list[int] | None:
        """Per-layer units (FFN widths) recorded by the run (None for a run that recorded
        none)."""
        if self._model.get("widths"):
            return list(self._model["widths"])
        if self._model.get("width"):
            return [self._model["width"]] * self.num_layers
        return None

    @property
    def sites(self) -> tuple[list[str], list[int]]:
        """The unit kind and the block of every site (runs made before heads existed: one
        neuron site per block)."""
        sites = self._model.get("units_per_site")
        if not sites:
            return ["neuron"] * self.num_layers, list(range(self.num_layers))
        return [s["kind"] for s in sites], list(self._model["site_blocks"])

    @property
    def block_neurons(self) -> list[int] | None:
        """Each block's FFN neuron count, for a mixed run (None for other runs)."""
        sites = self._model.get("units_per_site") or []
        counts = [s["count"] for s in sites if s["kind"] == "neuron"]
        return counts if self.units == "neurons+heads" else None

    @property
    def counted_widths(self) -> list[int] | None:
        """Per layer, how many values :meth:`counted_records` paths take: the run's neurons or
        heads per layer; for a mixed run each block's neurons plus heads."""
        widths = self.widths
        if widths is None or self.units != "neurons+heads":
            return widths
        blocks = self._model["site_blocks"]
        return [
            sum(w for w, b in zip(widths, blocks) if b == block) for block in sorted(set(blocks))
        ]

    @property
    def known_labels(self) -> set[str]:
        """The run's class names and its model's label names."""
        known = set(self._manifest.get("data", {}).get("classes", {}))
        return known | set(self._model.get("label_names") or [])

    # the images
    @property
    def planned_images(self) -> int | None:
        return self._manifest.get("run", {}).get("planned_images")

    @property
    def skipped(self) -> dict[str, str]:
        """Images find reported and skipped, with why."""
        return dict(self._manifest.get("skipped", {}))

    def check_complete(self, by_image: dict[str, dict]) -> None:
        """Refuse a run whose find stopped early (``by_image``: each image's records by method):
        a command that scores it would score only the images that are there."""
        methods = set(self.methods)
        finished = sum(1 for records in by_image.values() if methods <= set(records))
        planned, skipped = self.planned_images, len(self.skipped)
        if finished == 0 or (planned is not None and finished + skipped < planned):
            raise RunFormatError(
                f"{self.dir}: the find run is incomplete ({finished} of {planned} "
                f"images done, {skipped} skipped); finish it by re-running the same "
                f"find command, then run this one again"
            )

    def reader(self, data: str | Path | None = None) -> Reader:
        """The run's images, from where they were (or ``data``, if they moved)."""
        return Reader.of(self._settings, data)

    def load_model(self, model: str | None = None, device="cpu"):
        """The run's model with its settings (``model``: where it is now, if it moved; its
        weights and preprocessing are checked against the run's)."""
        return load_run_model(self.dir, self._settings, model, device)

    # the records
    def records(self) -> list[dict]:
        return list(self.iter_records())

    def iter_records(self):
        """The run's records, each checked for what every later command reads of it (its
        path, one entry per layer; its label, prediction, probability and final JAS): a
        damaged one is one line naming it."""
        layers = len(set(self.sites[1]))  # path entries: one per block
        for number, record in enumerate(iter_records(self.dir), 1):
            where = f"{self.dir / 'records.jsonl'}: record {number} ({record['image']}, "
            where += f"{record['method']}) is damaged"
            path = record.get("path")
            if not (isinstance(path, list) and len(path) == layers):
                raise RunFormatError(
                    f"{where}: expected a path of {layers} entries (one per layer), got "
                    f"{str(path)[:60]}"
                )
            for key, kind in RECORD_KEYS.items():
                value = record.get(key)
                if isinstance(value, bool) or not isinstance(value, kind):
                    raise RunFormatError(f"{where}: {key} is {value!r}; expected a number")
            yield record

    def counted_records(self, records: list[dict] | None = None) -> list[dict]:
        """The records with ``"path"`` as one number per layer (the neuron or head index; a
        mixed path's unit among its block's neurons, then heads), what every count over
        paths reads (:func:`neuronpath.pathformat.layer_units`)."""
        neurons = self.block_neurons
        return [
            r
            if record_units(r) == "neurons"
            else {**r, "path": layer_units(r["path"], record_units(r), neurons)}
            for r in (self.records() if records is None else records)
        ]

    def facts(self) -> list[tuple[str, object]]:
        """What the page's settings section lists, in order."""
        model = self._model
        widths = ", ".join(map(str, sorted(set(model.get("widths") or [])))) or None
        facts = [
            ("model", self._settings.get("model")),
            ("class", model.get("class")),
            ("layers", model.get("num_layers")),
            ("FFN widths", widths),
            ("token policy", f"{self._settings.get('token')} — {model.get('readout', '')}"),
            ("images", self.planned_images),
            ("skipped", len(self.skipped)),
        ]
        facts += [(k, self._settings[k]) for k in FACTS if self._settings.get(k) is not None]
        facts += [
            (f"{method} options", ", ".join(f"{k} {v}" for k, v in values.items()))
            for method, values in self.method_options.items()
            if values
        ]
        versions = self._manifest.get("versions", {})
        facts += [("versions", ", ".join(f"{k} {v}" for k, v in versions.items()))]
        return [(k, v) for k, v in facts if v is not None]
