"""How a path is written in a run's records, for every kind of unit (``find --units``).

* **neurons** (the paper's, and every run made before heads existed): ``"path"`` holds one FFN
  neuron index per layer, ``[i_0, ..., i_L-1]`` (K > 1: a list of K indices per layer); the
  record has no ``"units"`` key.
* **heads**: ``"units": "heads"`` and one entry per layer, ``["head", h]`` (K > 1: a list of K
  entries per layer).
* **neurons+heads** (mixed paths, one unit per block): ``"units": "neurons+heads"`` and one
  entry per block, ``["neuron", i]`` or ``["head", h]``.
* **sae** (sparse-autoencoder latents, ``find --units sae``): ``"units": "sae"`` and one entry
  per layer, ``["latent", i]`` at a layer read through an SAE, ``["neuron", i]`` at a layer
  without one (K > 1: a list of K entries per layer).

Inside the engine a path is one row of unit indices per *site* (a mixed adapter has two sites
per block, heads first; the site a block did not choose holds ``ABSENT``).  This module converts
between the two, and gives every analysis one integer per layer to count with
(:func:`layer_units`): the neuron or head index, or, for mixed paths, the index in the block's
units listed neurons first, then heads (head h of a block with n neurons is n + h).  It is pure
Python so that every layer may read records.
"""

from __future__ import annotations

from collections.abc import Sequence

ABSENT = -1  # the engine's "no unit at this site" (neuronpath.engine.units.ABSENT)
UNIT_SETS = ("neurons", "heads", "neurons+heads", "sae")


def unit_set(kinds: Sequence[str], blocks: Sequence[int]) -> str:
    """The run's unit set from its sites' kinds and blocks."""
    if len(set(blocks)) < len(blocks):
        return "neurons+heads"
    if "latent" in kinds:
        return "sae"
    return "heads" if set(kinds) == {"head"} else "neurons"


def encode(row: Sequence, units: str, kinds: Sequence[str], blocks: Sequence[int]):
    """One image's engine path, ``row[site]`` a unit index or a list of K of them, -> the
    record's ``"path"``."""
    if units == "neurons":
        return list(row)
    if units in ("heads", "sae"):
        return [
            [[kind, int(i)] for i in entries] if isinstance(entries, list) else [kind, int(entries)]
            for entries, kind in zip(row, kinds)
        ]
    out: dict[int, list] = {}
    for site, entries in enumerate(row):
        index = entries[0] if isinstance(entries, list) else entries
        if index != ABSENT:
            out[blocks[site]] = [kinds[site], int(index)]
    return [out[b] for b in sorted(set(blocks))]


def decode(path: Sequence, units: str, kinds: Sequence[str], blocks: Sequence[int]) -> list:
    """A record's ``"path"`` -> the engine's row, one unit index (K = 1) or a list of K per
    site."""
    if units == "neurons":
        return list(path)
    if units in ("heads", "sae"):
        return [
            [int(e[1]) for e in entry] if isinstance(entry[0], list) else int(entry[1])
            for entry in path
        ]
    row = []
    for site, (block, kind) in enumerate(zip(blocks, kinds)):
        chosen_kind, index = path[block]
        row.append(int(index) if chosen_kind == kind else ABSENT)
    return row


def record_units(record: dict) -> str:
    """The unit set a record's path is made of (records without ``"units"`` are neuron paths)."""
    return record.get("units", "neurons")


def layer_units(path: Sequence, units: str, neurons: Sequence[int] | None = None) -> list:
    """One number per layer (a list of K for TopK paths) to count a path with: the neuron or
    head index; for mixed paths the index among the block's units, neurons first (``neurons``:
    each block's neuron count)."""
    if units == "neurons":
        return list(path)
    if units in ("heads", "sae"):
        return [[e[1] for e in entry] if isinstance(entry[0], list) else entry[1] for entry in path]
    return [i if kind == "neuron" else neurons[b] + i for b, (kind, i) in enumerate(path)]


def unit_label(layer: int, kind: str, index: int) -> str:
    """How a page or a table names one unit: ``L3 N17`` (a neuron), ``L3 H2`` (a head),
    ``L3 F905`` (an SAE latent, a feature)."""
    return f"L{layer} {({'head': 'H', 'latent': 'F'}).get(kind, 'N')}{index}"


def site_units(
    path: Sequence, units: str, kinds: Sequence[str], blocks: Sequence[int]
) -> list[tuple[int, int, str]]:
    """Per layer of a record's path, ``(site, unit, label)`` of its (first) unit: where the
    engine reads it and how to name it."""
    row = decode(path, units, kinds, blocks)
    out = []
    for block in sorted(set(blocks)):
        for site in (s for s, b in enumerate(blocks) if b == block):
            index = row[site][0] if isinstance(row[site], list) else row[site]
            if index != ABSENT:
                out.append((site, int(index), unit_label(block, kinds[site], int(index))))
                break
    return out
