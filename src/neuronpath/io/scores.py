"""The candidate scores a ``find --save-scores`` run keeps beside its records.

Each batch of images is one file, ``RUN/scores/<digest of its image ids>.npz``: the image ids
(``ids``) and, per method, the scores it ranked, ``(images, layers, widest layer)`` in float32
(``-inf`` past a narrower layer's width), the array named after the method.  A batch is written
whole (a temporary file renamed) before its records, so a finished image always has its scores;
a batch that is redone after an interruption writes the same file again.  Every rank of a
``torchrun`` job writes its own batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import RunFormatError
from .store import reading

FOLDER = "scores"
REMEDY = "delete it and re-run the find command (with --save-scores) to write it again"


def write_scores(run_dir: str | Path, ids: Sequence[str], scores: Mapping[str, torch.Tensor]):
    """Store one batch's scores, ``{method: (images, layers, width)}``, for images ``ids``."""
    folder = Path(run_dir) / FOLDER
    folder.mkdir(exist_ok=True)
    name = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:20]
    arrays = {m: s.detach().float().cpu().numpy() for m, s in scores.items()}
    tmp = folder / f"{name}.tmp.npz"
    np.savez_compressed(tmp, ids=np.array(list(ids)), **arrays)
    tmp.replace(folder / f"{name}.npz")


class SavedScores:
    """The saved scores of a run, indexed by image once (only each file's ids are read)."""

    def __init__(self, run_dir: str | Path):
        self.folder = Path(run_dir) / FOLDER
        self.file_of: dict[str, Path] = {}
        for path in sorted(self.folder.glob("*.npz")):
            if not path.name.endswith(".tmp.npz"):
                with reading(path, REMEDY):
                    self.file_of.update((str(i), path) for i in np.load(path)["ids"])

    def get(self, method: str, ids: Sequence[str]) -> np.ndarray:
        """The scores of ``method`` for images ``ids``: (images, layers, width)."""
        missing = [i for i in ids if i not in self.file_of]
        if missing:
            raise RunFormatError(
                f"{self.folder}: no saved scores for {len(missing)} of the images asked for "
                f"(e.g. {missing[0]}); re-run the find command with --save-scores to finish them"
            )
        rows = {}
        for path in dict.fromkeys(self.file_of[i] for i in ids):
            with reading(path, REMEDY):
                data = np.load(path)
                if method not in data.files:
                    raise RunFormatError(f"{path} has no saved scores of {method!r}")
                names, values = [str(i) for i in data["ids"]], data[method]
            if values.ndim != 3 or len(values) != len(names):
                raise RunFormatError(
                    f"{path} is damaged ({method!r} holds shape {values.shape}; expected "
                    f"(images, layers, width) for its {len(names)} images); {REMEDY}"
                )
            rows.update((i, values[r]) for r, i in enumerate(names))
        return np.stack([rows[i] for i in ids])
