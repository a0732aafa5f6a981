"""Results on disk: a run folder with a manifest and one JSON line per image and method.

* ``manifest.json`` -- the settings that define the run (compared on resume), plus the
  environment, the model, preprocessing, alpha grid, label mapping and skipped images.
  Written atomically (temporary file + rename).
* ``records.jsonl`` -- appended as images finish; each write ends with a newline and is
  flushed and fsync'ed.  A kill can only leave a partial *last* line, which the next run
  removes before resuming, so no half-written record is ever read.

Several processes (ranks of one ``torchrun`` job) share a run folder without sharing a file: the
main rank writes the manifest and ``records.jsonl``, rank r > 0 appends to its own shard
``records.rank{r}.jsonl`` and ``skipped.rank{r}.json``.  The main rank holds an exclusive lock
on the folder for the whole run (:class:`RunLock`), so no two jobs write one folder.
:meth:`RunStore.consolidate` (the main
rank, once every rank is done, and at the start of every run, which also cleans up after a
killed job of any world size) merges the shards into ``records.jsonl`` and the manifest, so a
finished folder looks exactly as a single process leaves it; until then :func:`read_records`
reads the shards too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import RunConflictError, RunFormatError, RunLockedError, option
from ..pathformat import UNIT_SETS

log = logging.getLogger("neuronpath")

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"
SHARD_RECORDS = "records.rank{}.jsonl"
SHARD_SKIPPED = "skipped.rank{}.json"


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        if (Path(run_dir) / "find" / MANIFEST).is_file():  # a prune run: its paths are in find/
            raise RunFormatError(
                f"{run_dir}: a prune run folder; its probe paths are the find "
                f"run {Path(run_dir) / 'find'}, pass that"
            )
        raise RunFormatError(f"{run_dir}: not a neuronpath run (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFormatError(
            f"{path} is damaged (not valid JSON: {error}); restore it, or delete "
            f"{run_dir} to start the run over"
        ) from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise RunFormatError(
            f"{path} is damaged (expected an object with a 'settings' object); restore it, or "
            f"delete {run_dir} to start the run over"
        )
    return manifest


def _text(value) -> bool:
    return isinstance(value, str) and bool(value)


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# What the commands after ``find`` read of a find run's manifest: key -> (check, what it is).
FIND_MANIFEST = {
    ("settings", "model"): (_text, "the model's id or folder (a string)"),
    ("settings", "data"): (_text, "the image folder or dataset (a string)"),
    (
        "settings",
        "methods",
    ): (
        lambda v: isinstance(v, list) and bool(v) and all(_text(m) for m in v),
        "the list of the run's path methods (names)",
    ),
    ("settings", "weights_sha256"): (
        lambda v: isinstance(v, str) and len(v) == 64,
        "the SHA-256 of the model's weights (64 hex digits)",
    ),
    ("settings", "preprocess"): (lambda v: isinstance(v, dict), "the image preprocessing"),
    ("settings", "token"): (_text, "the token policy's name"),
    ("settings", "steps"): (_count, "the number of alpha steps (an integer >= 1)"),
    ("settings", "topk"): (_count, "K, neurons per layer (an integer >= 1)"),
    ("model", "num_layers"): (_count, "the model's number of layers (an integer >= 1)"),
}
# keys a find run may lack (runs made before they existed) but, where present, must be right
FIND_MANIFEST_OPTIONAL = {
    ("run", "planned_images"): (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "the number of images the run planned (an integer >= 0)",
    ),
    ("settings", "units"): (
        lambda v: v in UNIT_SETS,
        f"the units of the paths ({', '.join(UNIT_SETS)})",
    ),
    ("model", "widths"): (
        lambda v: isinstance(v, list) and all(_count(w) for w in v),
        "the units per layer (a list of integers >= 1)",
    ),
    ("settings", "save_scores"): (
        lambda v: v is True,
        "true: the run saved every method's candidate scores",
    ),
    ("settings", "reference"): (
        lambda v: isinstance(v, dict) and {"folder", "images", "sha256"} <= set(v),
        "the reference set of find --reference (folder, images, sha256)",
    ),
    ("settings", "options"): (
        lambda v: isinstance(v, dict) and all(isinstance(o, dict) for o in v.values()),
        "each method's options (an object of objects)",
    ),
    ("model", "units_per_site"): (
        lambda v: (
            isinstance(v, list)
            and all(
                isinstance(s, dict) and _text(s.get("kind")) and _count(s.get("count")) for s in v
            )
        ),
        "each site's unit kind and count (a list of objects with kind and count)",
    ),
    ("model", "site_blocks"): (
        lambda v: isinstance(v, list) and all(isinstance(b, int) and b >= 0 for b in v),
        "the block of each site (a list of integers >= 0)",
    ),
}


@contextlib.contextmanager
def reading(path: str | Path, remedy: str):
    """Read a state file a command wrote (an ``.npz``): a file that cannot be read as what it
    should be -- garbage, cut short, a missing array -- is one line naming it and ``remedy``
    (what to do), never a traceback."""
    try:
        yield
    except (ValueError, KeyError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise RunFormatError(
            f"{path} is damaged ({type(error).__name__}: {error}); {remedy}"
        ) from None


def _check_same(folder: Path, old: dict, new: dict) -> None:
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise RunConflictError(
            f"{folder} already holds a run with other settings ({details}). "
            f"Use another folder ({option('out', 'DIR')}), or delete this one to start over."
        )


def check_settings(folder: str | Path, manifest: dict) -> None:
    """Refuse, before anything is written, ``manifest`` for a run folder that holds a run with
    other settings (what opening its store would refuse)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        new = json.loads(json.dumps(manifest))["settings"]
        _check_same(folder, read_manifest(folder).get("settings", {}), new)


def store_skipped(folder: str | Path) -> dict[str, str]:
    """The images a run folder's manifest lists as skipped, with why."""
    return dict(read_manifest(folder).get("skipped") or {})


def store_settings(folder: str | Path) -> dict:
    """The settings a run folder's manifest records (what identifies its results; None if it
    records none)."""
    return read_manifest(folder).get("settings")


def read_find_manifest(run_dir: str | Path) -> dict:
    """A find run's manifest, checked against :data:`FIND_MANIFEST` (what every command after
    ``find`` reads): a missing key or a wrong type is one line naming the file, the key and
    what was expected."""
    manifest = read_manifest(run_dir)
    path = Path(run_dir) / MANIFEST
    if not isinstance(manifest.get("skipped", {}), dict):
        raise RunFormatError(
            f"{path}: skipped is {manifest['skipped']!r}; expected the skipped images with why "
            f"(an object) (the manifest is damaged: restore it, or re-run find into a new folder)"
        )
    present = {
        k: v
        for k, v in FIND_MANIFEST_OPTIONAL.items()
        if isinstance(manifest.get(k[0]), dict) and manifest[k[0]].get(k[1]) is not None
    }
    for (section, key), (check, what) in {**FIND_MANIFEST, **present}.items():
        part = manifest.get(section)
        if not isinstance(part, dict) or key not in part:
            raise RunFormatError(
                f"{path}: {section}.{key} is missing; expected {what} (the manifest is "
                f"damaged: restore it, or re-run find into a new folder)"
            )
        if not check(part[key]):
            raise RunFormatError(
                f"{path}: {section}.{key} is {part[key]!r}; expected {what} (the manifest is "
                f"damaged: restore it, or re-run find into a new folder)"
            )
    model = manifest["model"]
    damaged = "(the manifest is damaged: restore it, or re-run find into a new folder)"
    sites = model.get("units_per_site")
    if sites and "site_blocks" not in model:
        raise RunFormatError(
            f"{path}: model.site_blocks is missing; expected one block per site of "
            f"model.units_per_site {damaged}"
        )
    for key, count, what in (  # lists whose lengths must agree with the sites
        (
            "site_blocks",
            len(sites) if sites else None,
            "one block per site of model.units_per_site",
        ),
        ("widths", len(sites) if sites else model["num_layers"], "one width per site (per layer)"),
    ):
        value = model.get(key)
        if count is not None and value is not None and len(value) != count:
            raise RunFormatError(
                f"{path}: model.{key} is {value!r}; expected {what}, {count} of them {damaged}"
            )
    return manifest


def read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object a command wrote (``what`` says which and how to make it again), with
    ``keys``: one line naming the file where it is damaged."""
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunFormatError(f"{path} is damaged (not valid JSON: {error}); {what}") from None
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if not isinstance(data, dict) or missing:
        raise RunFormatError(
            f"{path} is damaged (expected an object with {', '.join(repr(k) for k in keys)}); "
            f"{what}"
        )
    return data


class RunLock:
    """An exclusive lock on a run folder for the life of one process's run: ``flock`` on
    ``.lock``, which the operating system releases when the process ends however it ends, so
    a killed run never leaves the folder locked.  The file names the holder."""

    def __init__(self, folder: Path, path: Path | None = None):
        """Lock ``folder`` by ``folder/.lock``, or by ``path`` (a folder made only at the end,
        as ``plant`` makes its output, is locked by a file beside it)."""
        import fcntl
        import socket

        self.path = folder / ".lock" if path is None else Path(path)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder()
            self._handle.close()
            raise RunLockedError(
                f"{folder} is in use by another neuronpath process ({holder}); "
                f"wait for it to finish, or use another folder "
                f"({option('out', 'DIR')})"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._handle.flush()

    def _holder(self, wait: float = 2.0) -> str:
        """The holder's line; it writes it just after it takes the lock, so wait for it."""
        deadline = time.monotonic() + wait
        while True:
            self._handle.seek(0)
            holder = self._handle.read().strip()
            if holder or time.monotonic() > deadline:
                return holder or "an unknown process"
            time.sleep(0.01)

    def release(self) -> None:
        if not self._handle.closed:
            self._handle.close()  # closing the file releases the lock


def _complete_lines(path: Path) -> tuple[list[dict], int]:
    """Parse the complete lines of a records file; returns (records, bytes they span)."""
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    records = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise RunFormatError(f"{path}: line {number} is damaged ({error})") from error
    return records, end


def _shards(run_dir: Path, pattern: str) -> list[Path]:
    return sorted(run_dir.glob(pattern.format("*")))


def _unique(records: list[dict]) -> list[dict]:
    """Drop repeated (image, method) records, keeping the first."""
    seen, out = set(), []
    for record in records:
        key = (record["image"], record["method"])
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def iter_records(run_dir: str | Path, method: str | None = None) -> Iterator[dict]:
    """Stream the complete records of a run (optionally of one method) line by line, in the
    order written, the shards of an unfinished multi-process run included; each (image,
    method) once.  A damaged line raises :class:`RunFormatError` with its line number."""
    read_manifest(run_dir)
    seen = set()
    for path in [Path(run_dir) / RECORDS, *_shards(Path(run_dir), SHARD_RECORDS)]:
        if not path.exists():
            continue
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if not line.endswith(b"\n") or not line.strip():
                    continue  # a partial last line (an interrupted write) or a blank one
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise RunFormatError(f"{path}: line {number} is damaged ({error})") from error
                if not (
                    isinstance(record, dict)
                    and isinstance(record.get("image"), str)
                    and isinstance(record.get("method"), str)
                ):
                    raise RunFormatError(
                        f"{path}: line {number} is damaged (expected a record with an image "
                        f"and a method, got {str(record)[:80]})"
                    )
                key = (record["image"], record["method"])
                if key not in seen and (method is None or record["method"] == method):
                    seen.add(key)
                    yield record


def read_records(run_dir: str | Path, method: str | None = None) -> list[dict]:
    """All complete records of a run (see :func:`iter_records`) as a list."""
    return list(iter_records(run_dir, method))


class RunStore:
    """Create or resume a run folder whose identity is ``manifest['settings']``.

    ``rank`` 0 (the default) owns the folder: it checks or writes the manifest and merges what
    earlier processes left (:meth:`consolidate`).  A rank r > 0 joins a folder the main rank has
    prepared and writes only its own shard files.
    """

    def __init__(self, run_dir: str | Path, manifest: dict, rank: int = 0):
        self.dir = Path(run_dir)
        self.rank = rank
        manifest = json.loads(json.dumps(manifest))  # compare as it reads back (lists, not tuples)
        path = self.dir / MANIFEST
        self.lock = None
        if rank == 0:
            if not path.exists() and (self.dir / "find" / MANIFEST).is_file():
                raise RunConflictError(
                    f"{self.dir} is a prune run folder; use another folder ({option('out', 'DIR')})"
                )
            self.dir.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.dir)
            if path.exists():
                old = read_manifest(self.dir)
                self._check_same(old.get("settings", {}), manifest["settings"])
                manifest = {
                    **manifest,
                    "skipped": old.get("skipped", {}),
                    "created": old.get("created", manifest.get("created")),
                }
            elif (self.dir / RECORDS).exists():
                raise RunFormatError(
                    f"{self.dir}: has {RECORDS} but no {MANIFEST}; not a neuronpath run folder"
                )
            self.manifest = manifest
            self.manifest.setdefault("skipped", {})
            write_json_atomic(path, self.manifest)
            self.consolidate()
        else:
            old = read_manifest(self.dir)
            self._check_same(old.get("settings", {}), manifest["settings"])
            self.manifest = old
        self.records_path = self.dir / (RECORDS if rank == 0 else SHARD_RECORDS.format(rank))
        self._skipped_path = self.dir / SHARD_SKIPPED.format(rank)
        self._skipped: dict[str, str] = {}
        self.done: dict[str, set[str]] = {}
        for record in read_records(self.dir):
            self.done.setdefault(record["image"], set()).add(record["method"])

    def close(self) -> None:
        """Release the folder (the main rank's lock)."""
        if self.lock is not None:
            self.lock.release()

    def _check_same(self, old: dict, new: dict) -> None:
        _check_same(self.dir, old, new)

    def consolidate(self, order: dict[str, int] | None = None) -> None:
        """Main rank: cut partial last lines, merge every shard into ``records.jsonl`` (each
        (image, method) once; sorted by ``order[image]`` when given, unknown images last) and
        every shard's skipped images into the manifest, then remove the shards."""
        records_path = self.dir / RECORDS
        records, end = _complete_lines(records_path)
        if records_path.exists() and records_path.stat().st_size > end:
            log.warning("%s: removing a partial record left by an interrupted run", records_path)
            with open(records_path, "r+b") as handle:
                handle.truncate(end)
        shards = _shards(self.dir, SHARD_RECORDS)
        skipped = _shards(self.dir, SHARD_SKIPPED)
        if not shards and not skipped:
            return
        for shard in shards:
            records += _complete_lines(shard)[0]
        merged = _unique(records)
        if order is not None:
            merged.sort(key=lambda r: order.get(r["image"], len(order)))
        tmp = records_path.with_name(RECORDS + ".tmp")
        with open(tmp, "w") as handle:
            handle.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in merged))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, records_path)
        for shard in skipped:
            self.manifest["skipped"].update(json.loads(shard.read_text()))
        write_json_atomic(self.dir / MANIFEST, self.manifest)
        for shard in shards + skipped:
            shard.unlink()

    def append(self, records: list[dict]) -> None:
        """Append records durably (one write, flushed and fsync'ed)."""
        records = [r for r in records if r["method"] not in self.done.get(r["image"], ())]
        if not records:
            return
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.records_path, "a") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        for record in records:
            self.done.setdefault(record["image"], set()).add(record["method"])

    def skip(self, image: str, reason: str) -> None:
        """Record an image that could not be used (kept in the manifest)."""
        if self.rank == 0:
            self.manifest["skipped"][image] = reason
            write_json_atomic(self.dir / MANIFEST, self.manifest)
        else:
            self._skipped[image] = reason
            write_json_atomic(self._skipped_path, self._skipped)
