"""Class folder names -> the model's label ids, and two-column class files.

Folder names are matched to the model's labels in this order (the choice is logged and
stored in the run's manifest):

1. ``label2id``: every folder name is a label name of the model;
2. ``imagenet-synsets``: every folder is an ImageNet synset (``n01440764``) and the model
   has the 1000 ImageNet-1k classes, whose ids are the synsets in sorted order;
3. ``label-ids``: every name is an integer, the model's label id itself (labels files and
   datasets without class names);
4. ``sorted-folders``: the i-th folder in sorted order is class i (only when no folder
   name matches a label, or when asked for explicitly).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from ..errors import InputError, option

LABEL_MAPPINGS = ("auto", "label2id", "imagenet-synsets", "label-ids", "sorted-folders")
SYNSET = re.compile(r"^n\d{8}$")


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k synsets in class-index order (= sorted order)."""
    text = resources.files("neuronpath.io").joinpath("imagenet_synsets.txt").read_text()
    return text.split()


def map_labels(
    folders: list[str],
    id2label: dict[int, str],
    how: str = "auto",
    where: str | None = None,
    items: str = "folders",
) -> tuple[dict, str]:
    """Map class folder names (or, ``items="labels"``, the labels of a labels file) to label
    ids; returns (mapping, how it was decided).  Refusals name ``where`` (default: the
    ``data`` option) and call the names ``items``."""
    where = option("data") if where is None else where
    kinds = "class folders" if items == "folders" else items
    if how not in LABEL_MAPPINGS:
        raise InputError(f"{option('labels')}: expected one of {LABEL_MAPPINGS}, got {how!r}")
    label2id: dict[str, int] = {}
    twice: dict[str, list[int]] = {}
    for i, name in sorted(id2label.items()):
        if name in label2id:
            twice.setdefault(name, [label2id[name]]).append(i)
        label2id.setdefault(name, i)
    matched = [f for f in folders if f in label2id]
    if how in ("auto", "label2id") and matched and len(matched) == len(folders):
        ambiguous = [f for f in folders if f in twice]
        if ambiguous:
            name, ids = ambiguous[0], twice[ambiguous[0]]
            raise InputError(
                f"{where}: the class {name!r} is the model's label "
                f"{' and '.join(map(str, ids))}, so it names no single class; label those "
                f"images by id (folders or labels {', '.join(map(str, ids))} with "
                f"{option('labels', 'label-ids')}) or by ImageNet synset"
            )
        return {f: label2id[f] for f in folders}, "label2id"
    if how == "label2id":
        missing = sorted(set(folders) - set(matched))
        raise InputError(f"{where}: {items} {missing[:5]} are not label names of the model")
    all_synsets = all(SYNSET.match(f) for f in folders)
    if how in ("auto", "imagenet-synsets") and all_synsets and len(id2label) == 1000:
        index = {s: i for i, s in enumerate(imagenet_synsets())}
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise InputError(f"{where}: {items} {unknown[:5]} are not ImageNet-1k synsets")
        return {f: index[f] for f in folders}, "imagenet-synsets"
    if how == "imagenet-synsets":
        raise InputError(
            f"{where}: labels 'imagenet-synsets' needs synset {items} (n01440764 ...) "
            "and a model with 1000 classes"
        )
    numbers = all(re.fullmatch(r"\d+", f) for f in folders)
    if how == "label-ids" or (how == "auto" and numbers and not matched):
        if not numbers:
            raise InputError(f"{where}: labels 'label-ids' needs integer labels")
        bad = [f for f in folders if id2label and int(f) >= len(id2label)]
        if bad:
            raise InputError(
                f"{where}: label ids {bad[:3]} are not classes of the model "
                f"(0..{len(id2label) - 1})"
            )
        return {f: int(f) for f in folders}, "label-ids"
    if how == "auto" and matched:
        missing = sorted(set(folders) - set(matched))
        raise InputError(
            f"{where}: some {kinds} are label names of the model but "
            f"{missing[:5]} are not; rename them, or pass "
            f"{option('labels', 'sorted-folders')} to use sorted folder order"
        )
    if id2label and len(folders) > len(id2label):
        raise InputError(
            f"{where}: {len(folders)} {kinds} but the model has only {len(id2label)} classes"
        )
    return {f: i for i, f in enumerate(folders)}, "sorted-folders"


def read_two_columns(path: str | Path, what: str = "classes") -> dict[str, str]:
    """``{key: value}`` from a file of lines ``key<TAB>value`` (or ``key value``: without a
    tab the first run of white space separates them).  Blank lines and ``#`` comments are
    skipped; the value may be empty.  ``what`` names the option in messages.  A file that is
    not UTF-8 text, or that lists a key twice, is refused naming its lines."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{option(what)}: no such file {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(
            f"{option(what)}: cannot read {path} as a UTF-8 text file ({error}); expected "
            f"lines 'label<TAB>value'"
        ) from None
    pairs: dict[str, str] = {}
    lines: dict[str, list[int]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("\t") if "\t" in line else line.partition(" ")
        key = key.strip()
        pairs[key] = value.strip()
        lines.setdefault(key, []).append(n)
    twice = {k: v for k, v in lines.items() if len(v) > 1}
    if twice:
        key, where = next(iter(twice.items()))
        raise InputError(
            f"{option(what)}: {path} lists the label {key!r} on lines "
            f"{', '.join(map(str, where))}; expected each label once"
        )
    return pairs


def check_labels(pairs: dict[str, str], known, path, what: str, of: str) -> None:
    """Refuse a label file whose labels are not all in ``known`` (``of`` names what they
    must be), quoting the offending labels."""
    known = set(known)
    unknown = [k for k in pairs if k not in known]
    if unknown:
        listed = ", ".join(sorted(known)[:6]) + (" ..." if len(known) > 6 else "")
        raise InputError(
            f"{option(what)}: {path} has labels that are not {of}: "
            f"{', '.join(repr(k) for k in unknown[:4])}{' ...' if len(unknown) > 4 else ''} "
            f"(they are {listed}); expected lines 'label<TAB>name' with those labels first"
        )


def read_groups(path) -> dict[str, str]:
    """A two-column file: class (folder / label name) and group, tab- or space-separated."""
    groups = read_two_columns(path, "groups")
    empty = [name for name, group in groups.items() if not group]
    if empty:
        raise InputError(
            f"{option('groups')}: {path} has no group for {empty[:3]}; expected lines "
            f"'class<TAB>group'"
        )
    return groups


def read_class_names(path: str | Path, what: str = "class_names") -> dict[str, str]:
    """A two-column file: class (folder / label name) and a readable name (the class itself
    where the name is missing)."""
    return {key: value or key for key, value in read_two_columns(path, what).items()}
