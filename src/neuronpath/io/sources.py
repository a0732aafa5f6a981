"""Where a run's images come from, behind one reader interface (an image key, a label, the
decoded image):

* an **ImageFolder**: one sub-folder of images per class (:func:`~.images.scan_image_folder`);
* a **flat folder plus a labels file** (``--labels-file``): ImageNet's validation set as it
  ships -- the devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per
  image, in file-number order; the devkit's ``meta.mat`` beside it maps the ids to synsets),
  ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the synset first), or any list of
  ``path<TAB>label`` lines or ``path,label`` CSV rows;
* a **Hugging Face dataset** (``--data hf:PATH_OR_ID[:SPLIT]``, with the ``datasets``
  extra): a ``save_to_disk`` folder, parquet files, or a hub id where there is network; the
  image and label columns are the dataset's ``Image`` and ``ClassLabel`` features, or named
  (``--image-column``, ``--label-column``).

Labels are class names or synsets (mapped to the model's ids as folder names are,
:func:`~.labels.map_labels`) or, in a labels file or a dataset without class names, the model's
label ids themselves.  Every source's image keys are stable (a file path relative to the
folder; a dataset's row number), so resume, ``--limit``'s round-robin over classes and torchrun
sharding behave the same for all.  The manifest records the source and its fingerprint
(:meth:`DataSpec.settings`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import ImageReadError, InputError, option
from .hub import hub_reachable
from .images import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    ImageItem,
    open_item,
    scan_image_folder,
    to_rgb,
)
from .labels import map_labels

DATASET_PREFIX = "hf:"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})")


@dataclass(frozen=True)
class DataSpec:
    """The images a command reads (each field's ``help`` is its command-line help)."""

    data: str | None = field(
        default=None,
        metadata={
            "help": "ImageFolder (one sub-folder per class), a flat folder with "
            "--labels-file, or hf:PATH_OR_ID[:SPLIT] (a Hugging Face dataset)"
        },
    )
    labels_file: str | None = field(
        default=None,
        metadata={
            "help": "a flat folder's labels: ILSVRC2012_validation_ground_truth.txt (with the "
            "devkit's meta.mat beside it), LOC_val_solution.csv, or path<TAB>label lines / "
            "path,label CSV rows"
        },
    )
    image_column: str | None = field(
        default=None, metadata={"help": "hf: datasets: the image column (default: found)"}
    )
    label_column: str | None = field(
        default=None, metadata={"help": "hf: datasets: the label column (default: found)"}
    )

    @property
    def is_dataset(self) -> bool:
        return str(self.data).startswith(DATASET_PREFIX)

    def open(self, id2label: dict[int, str], how: str = "auto") -> ImageFolder:
        """The source's images and labels (:class:`~.images.ImageFolder` of its kind)."""
        if self.data is None:
            raise InputError(f"{option('data')}: expected the images to read")
        if self.is_dataset:
            if self.labels_file:
                raise InputError(
                    f"{option('labels_file')}: a dataset has its labels in a column; "
                    f"pass {option('label_column')} to name it"
                )
            return open_dataset(self, id2label, how)
        if self.image_column or self.label_column:
            raise InputError(
                f"{option('image_column')}, {option('label_column')}: for hf: datasets only"
            )
        if self.labels_file:
            return open_flat(
                Path(self.data).expanduser(), Path(self.labels_file).expanduser(), id2label, how
            )
        return scan_image_folder(self.data, id2label, how)


# -- a flat folder plus a labels file --


def _flat_files(root: Path) -> dict[str, Path]:
    if not root.is_dir():
        raise InputError(f"{option('data')}: {root} is not a folder")
    files = {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_EXTENSIONS
    }
    if not files:
        raise InputError(f"{option('data')}: no image files under {root}")
    return files


def _devkit_synsets(folder: Path) -> list[str]:
    """The ILSVRC2012_ID -> synset table of the devkit (``meta.mat`` beside the ground truth,
    or ``map_clsloc.txt`` lines ``synset id name``): synsets in id order 1..1000."""
    meta = folder / "meta.mat"
    if meta.is_file():
        from scipy.io import loadmat

        rows = loadmat(meta, squeeze_me=True)["synsets"]
        table = {
            int(r["ILSVRC2012_ID"]): str(r["WNID"]) for r in rows if int(r["ILSVRC2012_ID"]) <= 1000
        }
        return [table[i] for i in range(1, 1001)]
    clsloc = folder / "map_clsloc.txt"
    if clsloc.is_file():
        pairs = [line.split()[:2] for line in clsloc.read_text().splitlines() if line.strip()]
        table = {int(i): s for s, i in pairs}
        return [table[i] for i in range(1, len(table) + 1)]
    raise InputError(
        f"{option('labels_file')}: the devkit's ground truth numbers classes by ILSVRC2012_ID; "
        f"its meta.mat (in ILSVRC2012_devkit_t12/data, beside the ground truth file) maps "
        f"them to synsets, and is not in {folder}"
    )


def read_labels_file(path: Path, files: dict[str, Path]) -> dict[str, str]:
    """``{image key: label}`` of a labels file (see the module docstring), checked: every
    image of the folder has one label, no image twice, every named image exists.  Line n of the
    file is line n in every message; a byte-order mark is not part of the first line; in the
    devkit's ground truth, where line n *is* image n, a blank or malformed line is refused, never
    skipped (skipping would give every later image the next one's label)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{option('labels_file')}: cannot read {path} as text ({error})") from None
    numbered_lines = list(enumerate(text.splitlines(), start=1))
    while numbered_lines and not numbered_lines[-1][1].strip():  # blank lines at the end
        numbered_lines.pop()
    lines = [(n, line) for n, line in numbered_lines if line.strip()]
    if not lines:
        raise InputError(f"{option('labels_file')}: {path} is empty")
    by_name = {Path(k).stem: k for k in files}
    pairs: list[tuple[str, str]] = []

    def bad(n: int, line: str, expected: str):
        return InputError(
            f"{option('labels_file')}: line {n} of {path} is {line.strip()!r}; expected {expected}"
        )

    digits = sum(line.strip().isdigit() for _, line in lines)
    if digits > len(lines) / 2:  # the devkit's ground truth: line n is the class of image n
        for n, line in numbered_lines:
            if not line.strip().isdigit() or not 1 <= int(line) <= 1000:
                raise bad(n, line, "one ILSVRC2012_ID (1..1000) per line, line n for image n")
        synsets = _devkit_synsets(path.parent)
        numbered = {}
        for key in files:
            match = VAL_NAME.search(key)
            if match is None:
                raise InputError(
                    f"{option('labels_file')}: {path} is the devkit's ground truth (one class id "
                    f"per line), which labels ILSVRC2012_val_NNNNNNNN files; {key} is not one"
                )
            numbered[int(match.group(1))] = key
        for n, line in numbered_lines:
            if n in numbered:
                pairs.append((numbered[n], synsets[int(line) - 1]))
    else:
        header = lines[0][1].lower().replace(" ", "")
        if header.startswith("imageid,predictionstring"):  # LOC_val_solution.csv
            for n, line in lines[1:]:
                row = next(csv.reader([line]))
                if len(row) < 2 or not row[1].split():
                    raise bad(n, line, "'ImageId,PredictionString' with a synset first")
                pairs.append((by_name.get(row[0], row[0]), row[1].split()[0]))
        else:
            rows = [
                (n, line.split("\t") if "\t" in line else next(csv.reader([line])))
                for n, line in lines
            ]
            if [c.strip().lower() for c in rows[0][1][:2]] in (
                ["path", "label"],
                ["image", "label"],
                ["file", "label"],
            ):
                rows = rows[1:]
            for n, row in rows:
                if len(row) < 2 or not row[1].strip():
                    raise InputError(
                        f"{option('labels_file')}: line {n} of {path} is not 'path<TAB>label' "
                        f"or 'path,label': {row!r}"
                    )
                key = row[0].strip()
                pairs.append(
                    (key if key in files else by_name.get(Path(key).stem, key), row[1].strip())
                )
    seen: dict[str, str] = {}
    twice = []
    for key, label in pairs:
        if key in seen:
            twice.append(key)
        seen[key] = label
    if twice:
        raise InputError(
            f"{option('labels_file')}: {path} labels {twice[0]} twice "
            f"({len(twice)} images repeated)"
        )
    unknown = [k for k in seen if k not in files]
    if unknown:
        raise InputError(
            f"{option('labels_file')}: {path} names {len(unknown)} images that are not in the "
            f"folder, e.g. {unknown[0]}"
        )
    missing = [k for k in files if k not in seen]
    if missing:
        raise InputError(
            f"{option('labels_file')}: {len(missing)} images of the folder have no label in "
            f"{path}, e.g. {missing[0]}"
        )
    empty = [k for k, v in seen.items() if not v]
    if empty:
        raise InputError(f"{option('labels_file')}: {path} gives no label for {empty[0]}")
    return seen


def _label_ids(
    names: list[str], id2label: dict[int, str], how: str, where: str
) -> tuple[dict, str]:
    """Labels of a labels file or a dataset -> the model's label ids: its label names, ImageNet
    synsets of a 1000-class model, or integer ids.  Unlike folder names, labels that are none of
    these are refused, not numbered in sorted order, unless that is asked for
    (``labels='sorted-folders'``): a file of readable names on a synset model would otherwise
    label every image silently with another class."""
    mapping, decided = map_labels(names, id2label, how, where, items="labels")
    if decided == "sorted-folders" and how == "auto" and id2label:
        known = sorted(id2label.values())
        raise InputError(
            f"{where}: the labels {', '.join(repr(n) for n in names[:3])}"
            f"{' ...' if len(names) > 3 else ''} are not classes of the model (its labels are "
            f"e.g. {', '.join(repr(k) for k in known[:3])}); label the images with the model's "
            f"label names, ImageNet synsets or label ids, or pass "
            f"{option('labels', 'sorted-folders')} to number the labels in sorted order"
        )
    return mapping, decided


def open_flat(root: Path, labels_file: Path, id2label: dict[int, str], how: str) -> ImageFolder:
    """A flat folder of images with their labels in ``labels_file``."""
    files = _flat_files(root)
    if not labels_file.is_file():
        raise InputError(f"{option('labels_file')}: no such file {labels_file}")
    labels = read_labels_file(labels_file, files)
    classes = sorted(set(labels.values()))
    mapping, decided = _label_ids(classes, id2label, how, option("labels_file"))
    items = [ImageItem(key, files[key], mapping[labels[key]], labels[key]) for key in sorted(files)]
    items.sort(key=lambda it: (it.folder, it.id))
    digest = hashlib.sha256(labels_file.read_bytes()).hexdigest()
    return ImageFolder(
        root,
        items,
        mapping,
        decided,
        kind="flat",
        extra={"labels_file": str(labels_file.resolve()), "labels_file_sha256": digest},
    )


# -- a Hugging Face dataset --


@dataclass(frozen=True)
class DatasetRow:
    """One row of a Hugging Face dataset: its image, decoded on demand (in any process)."""

    spec: str
    index: int
    image_column: str

    def load(self) -> Image.Image:
        try:
            value = _rows(self.spec)[self.index][self.image_column]
            if isinstance(value, dict):  # an undecoded image: bytes or a path
                value = (
                    Image.open(io.BytesIO(value["bytes"]))
                    if value.get("bytes")
                    else Image.open(value["path"])
                )
            if not isinstance(value, Image.Image):
                raise TypeError(f"column {self.image_column!r} holds {type(value).__name__}")
            value.load()
            return to_rgb(value)
        except Exception as error:  # noqa: BLE001 - any failure of one row is that row's
            raise ImageReadError(
                f"{self.spec} row {self.index}: cannot read image ({type(error).__name__}: {error})"
            ) from error

    def __str__(self) -> str:
        return f"{self.spec}#{self.index}"


def _split_spec(spec: str) -> tuple[str, str | None]:
    """``hf:PATH_OR_ID[:SPLIT]`` -> (path or id, split)."""
    body = spec[len(DATASET_PREFIX) :]
    if Path(body).expanduser().exists():
        return body, None
    head, sep, split = body.rpartition(":")
    if sep and head and (Path(head).expanduser().exists() or "/" not in split):
        return head, split
    return body, None


_LATEST: dict[str, object] = {}  # per spec, the dataset as it was last opened here


def _dataset(spec: str):
    """The dataset of ``spec``, opened once per process -- and again where its files changed
    on disk since (a dataset re-saved at the same path is another dataset)."""
    _LATEST[spec] = _opened(spec, _stamp(spec))
    return _LATEST[spec]


def _rows(spec: str):
    """The dataset rows are read from: as it was last opened (checked) in this process."""
    return _LATEST[spec] if spec in _LATEST else _dataset(spec)


def _stamp(spec: str) -> tuple:
    """What changes when a local dataset is re-saved: its files' sizes and modification times."""
    path = Path(_split_spec(spec)[0]).expanduser()
    if not path.exists():
        return ()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)


@functools.lru_cache(maxsize=4)
def _opened(spec: str, stamp: tuple):
    """The dataset of ``spec`` as its files are (``stamp``)."""
    try:
        import datasets
    except ImportError:
        raise InputError(
            f"{option('data')}: {spec} is a Hugging Face dataset; install the datasets extra "
            f"(pip install -e '.[datasets]')"
        ) from None
    datasets.disable_progress_bars()
    where, split = _split_spec(spec)
    path = Path(where).expanduser()
    if path.is_dir() and (
        (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    ):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_dir() or path.suffix == ".parquet":
        files = sorted(str(p) for p in ([path] if path.is_file() else path.rglob("*.parquet")))
        if not files:
            raise InputError(
                f"{option('data')}: {path} is neither a save_to_disk folder nor holds parquet files"
            )
        loaded = datasets.load_dataset("parquet", data_files=files, split="train")
    elif path.exists():
        raise InputError(f"{option('data')}: {path} is not a dataset folder or a parquet file")
    elif not hub_reachable():
        raise InputError(
            f"{option('data')}: {where!r} is not a local dataset folder or parquet file, and the "
            f"Hugging Face Hub cannot be reached (no network, or HF_HUB_OFFLINE is set). On a "
            f"machine with network, datasets.load_dataset({where!r}).save_to_disk(DIR), copy "
            f"DIR here and pass {option('data', 'hf:DIR')}"
        )
    else:
        try:
            loaded = datasets.load_dataset(where, split=split)
        except Exception as error:  # noqa: BLE001 - an unknown id, a gated dataset, ...
            raise InputError(
                f"{option('data')}: the hub could not give {where!r} ({error})"
            ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise InputError(
                    f"{option('data')}: {spec} has the splits {', '.join(loaded)}; name one "
                    f"as {spec}:SPLIT"
                )
            split = next(iter(loaded))
        if split not in loaded:
            raise InputError(
                f"{option('data')}: {spec} has no split {split!r} (it has {', '.join(loaded)})"
            )
        loaded = loaded[split]
    return loaded


def _columns(ds, spec: DataSpec) -> tuple[str, str, list[str] | None]:
    """(image column, label column, class names or None) of a dataset."""
    import datasets

    features = ds.features
    image = spec.image_column or next(
        (name for name, f in features.items() if isinstance(f, datasets.Image)), None
    )
    if image is None or image not in features:
        raise InputError(
            f"{option('image_column')}: {spec.data} has no image column "
            f"({'no column ' + repr(image) if image else 'no Image feature'}; columns: "
            f"{', '.join(features)})"
        )
    if not isinstance(features[image], datasets.Image):
        kind = getattr(features[image], "dtype", type(features[image]).__name__)
        raise InputError(
            f"{option('image_column')}: column {image!r} of {spec.data} holds {kind}, not "
            f"images; expected a column of the Image feature (columns: "
            f"{', '.join(n for n, f in features.items() if isinstance(f, datasets.Image))})"
        )
    label = spec.label_column or next(
        (name for name, f in features.items() if isinstance(f, datasets.ClassLabel)),
        next((n for n in ("label", "labels") if n in features), None),
    )
    if label is None or label not in features:
        raise InputError(
            f"{option('label_column')}: {spec.data} has no label column "
            f"({'no column ' + repr(label) if label else 'no ClassLabel feature'}; columns: "
            f"{', '.join(features)})"
        )
    names = features[label].names if isinstance(features[label], datasets.ClassLabel) else None
    return image, label, names


def open_dataset(spec: DataSpec, id2label: dict[int, str], how: str) -> ImageFolder:
    """A Hugging Face dataset's rows as images with labels."""
    ds = _dataset(spec.data)
    image, label, names = _columns(ds, spec)
    raw = ds[label]
    classes = [names[v] for v in raw] if names else [str(v) for v in raw]
    mapping, decided = _label_ids(sorted(set(classes)), id2label, how, option("label_column"))
    width = max(6, len(str(len(raw))))
    items = [
        ImageItem(f"{i:0{width}d}", DatasetRow(spec.data, i, image), mapping[c], c)
        for i, c in enumerate(classes)
    ]
    items.sort(key=lambda it: (it.folder, it.id))
    where, split = _split_spec(spec.data)
    return ImageFolder(
        Path(where),
        items,
        mapping,
        decided,
        kind="dataset",
        extra={
            "dataset": spec.data,
            "split": split,
            "image_column": image,
            "label_column": label,
            "fingerprint": getattr(ds, "_fingerprint", None),
            "rows": len(raw),
        },
    )


@dataclass(frozen=True)
class Reader:
    """The images of a run's source by key, for every command after ``find``: a folder's files
    (``root / key``) or a dataset's rows (``spec``: the run's ``hf:`` source)."""

    root: Path
    dataset: dict | None = None

    @classmethod
    def of(cls, settings: dict, data: str | Path | None = None) -> "Reader":
        """The reader of a run's ``settings`` (``data``: where its images are now, if they
        moved: a folder, or an ``hf:`` dataset)."""
        source = settings.get("data_source") or {}
        if source.get("dataset"):
            spec = str(data) if data else source["dataset"]
            _check_unchanged(spec, source)
            return cls(Path(_split_spec(spec)[0]), {**source, "dataset": spec})
        return cls(Path(data or settings["data"]).expanduser())

    def item(self, key: str, label: int = -1) -> ImageItem:
        if self.dataset is not None:
            row = DatasetRow(self.dataset["dataset"], int(key), self.dataset["image_column"])
            return ImageItem(key, row, label, "")
        return ImageItem(key, self.root / key, label, "")

    def exists(self, key: str) -> bool:
        if self.dataset is not None:
            return 0 <= int(key) < len(_rows(self.dataset["dataset"]))
        return (self.root / key).is_file()

    def load(self, key: str) -> Image.Image:
        return open_item(self.item(key))

    def __str__(self) -> str:
        return self.dataset["dataset"] if self.dataset is not None else str(self.root)


def _check_unchanged(spec: str, source: dict) -> None:
    """A run reads a dataset's rows by number: refuse a dataset whose rows are not the ones the
    run recorded (another fingerprint or row count: re-saved, filtered, shuffled), which would
    pair other images with the run's labels and paths."""
    recorded, rows = source.get("fingerprint"), source.get("rows")
    if recorded is None and rows is None:
        return
    ds = _dataset(spec)
    now = getattr(ds, "_fingerprint", None)
    if (recorded is not None and now != recorded) or (rows is not None and len(ds) != rows):
        raise InputError(
            f"{option('data')}: {spec} is not the dataset the run was made on (fingerprint "
            f"{now}, {len(ds)} rows; the run recorded {recorded}, {rows} rows): its rows may be "
            f"other images; pass the run's dataset, or run find again on this one"
        )


def as_data(data: DataSpec | str | Path) -> DataSpec:
    """A :class:`DataSpec` from a spec or a bare ``--data`` value."""
    return data if isinstance(data, DataSpec) else DataSpec(str(data))
