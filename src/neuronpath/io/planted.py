"""``planted.json``, what ``neuronpath plant`` writes beside a planted model: read once and
checked by a schema (:data:`SCHEMA`), so a damaged file is one line naming it and the key, never
a traceback in the command that reads it (``plant`` itself, ``benchmark``)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError, RunFormatError, option

PLANTED = "planted.json"


def _index(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _units(value) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(k.isdigit() and _index(v) for k, v in value.items())
    )


def _distractors(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(d, dict)
        and isinstance(d.get("kind"), str)
        and _index(d.get("layer"))
        and _index(d.get("neuron"))
        for d in value
    )


SCHEMA = {  # key: (check, what it should be)
    "identity": (lambda v: isinstance(v, dict), "the plant's settings (an object)"),
    "layers": (
        lambda v: isinstance(v, list) and bool(v) and all(_index(x) for x in v),
        "the planted layers (a list of integers >= 0)",
    ),
    "units": (_units, "the planted unit of each layer (an object: layer -> neuron)"),
    "distractors": (_distractors, "the distractors (a list of objects: kind, layer, neuron)"),
    "images": (
        lambda v: (
            isinstance(v, dict)
            and isinstance(v.get("triggered"), str)
            and isinstance(v.get("clean"), str)
        ),
        "where the triggered and clean images are (an object: triggered, clean)",
    ),
    "weights_sha256": (
        lambda v: isinstance(v, str) and len(v) == 64,
        "the planted weights' SHA-256 (64 hex digits)",
    ),
    "target": (
        lambda v: isinstance(v, dict) and _index(v.get("label")),
        "the target class (an object with its label id)",
    ),
}


def read_planted(folder: str | Path) -> dict:
    """``folder/planted.json``, checked by :data:`SCHEMA`."""
    path = Path(folder) / PLANTED
    if not path.is_file():
        raise InputError(
            f"{option('planted')}: {folder} has no {PLANTED}; expected a folder written by "
            f"neuronpath plant"
        )
    remedy = "restore it, or run neuronpath plant again into a new folder"
    try:
        planted = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFormatError(f"{path} is damaged ({error}); {remedy}") from None
    if not isinstance(planted, dict):
        raise RunFormatError(f"{path} is damaged (expected an object); {remedy}")
    for key, (check, what) in SCHEMA.items():
        if key not in planted:
            raise RunFormatError(f"{path}: {key} is missing; expected {what}; {remedy}")
        if not check(planted[key]):
            shown = str(planted[key])[:80]
            raise RunFormatError(f"{path}: {key} is {shown}; expected {what}; {remedy}")
    return planted


def check_planted_units(planted: dict, folder: str | Path, widths: list[int]) -> None:
    """Refuse a ``planted.json`` whose units or distractors name a layer or a neuron that the
    model (``widths``: units per layer) does not have."""
    path = Path(folder) / PLANTED
    named = [(int(l), n, "units") for l, n in planted["units"].items()]
    named += [(d["layer"], d["neuron"], "distractors") for d in planted["distractors"]]
    for layer, neuron, key in named:
        if layer >= len(widths) or neuron >= widths[layer]:
            raise RunFormatError(
                f"{path}: {key} names layer {layer}, neuron {neuron}, which the model does not "
                f"have ({len(widths)} layers of {max(widths)} units at most); restore it, or run "
                f"neuronpath plant again into a new folder"
            )
