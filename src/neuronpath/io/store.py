"""Results on disk: a run folder with a manifest and one JSON line per image and method.

* ``manifest.json`` -- the settings that define the run (compared on resume), plus the
  environment, the model, preprocessing, alpha grid, label mapping and skipped images.
  Written atomically (temporary file + rename).
* ``records.jsonl`` -- appended as images finish; each write ends with a newline and is
  flushed and fsync'ed.  A kill can only leave a partial *last* line, which the next run
  removes before resuming, so no half-written record is ever read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import RunConflictError, RunFormatError, option

log = logging.getLogger("neuronpath")

MANIFEST = "manifest.json"
RECORDS = "records.jsonl"


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
        raise RunFormatError(f"{run_dir}: not a neuronpath run (no {MANIFEST})")
    return json.loads(path.read_text())


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


def read_records(run_dir: str | Path, method: str | None = None) -> list[dict]:
    """All complete records of a run (optionally of one method), in the order written."""
    read_manifest(run_dir)
    records, _ = _complete_lines(Path(run_dir) / RECORDS)
    return [r for r in records if method is None or r["method"] == method]


class RunStore:
    """Create or resume a run folder whose identity is ``manifest['settings']``."""

    def __init__(self, run_dir: str | Path, manifest: dict):
        self.dir = Path(run_dir)
        self.records_path = self.dir / RECORDS
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = json.loads(json.dumps(manifest))  # compare as it reads back (lists, not tuples)
        path = self.dir / MANIFEST
        if path.exists():
            old = json.loads(path.read_text())
            self._check_same(old.get("settings", {}), manifest["settings"])
            manifest = {**manifest, "skipped": old.get("skipped", {}),
                        "created": old.get("created", manifest.get("created"))}
        elif self.records_path.exists():
            raise RunFormatError(f"{self.dir}: has {RECORDS} but no {MANIFEST}; "
                                 "not a neuronpath run folder")
        self.manifest = manifest
        self.manifest.setdefault("skipped", {})
        write_json_atomic(path, self.manifest)
        self._repair()

    def _check_same(self, old: dict, new: dict) -> None:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise RunConflictError(
                f"{self.dir} already holds a run with other settings ({details}). "
                f"Use another folder ({option('out', 'DIR')}), or delete this one to start over.")

    def _repair(self) -> None:
        records, end = _complete_lines(self.records_path)
        if self.records_path.exists() and self.records_path.stat().st_size > end:
            log.warning("%s: removing a partial record left by an interrupted run",
                        self.records_path)
            with open(self.records_path, "r+b") as handle:
                handle.truncate(end)
        self.done: dict[str, set[str]] = {}
        for record in records:
            self.done.setdefault(record["image"], set()).add(record["method"])

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
        self.manifest["skipped"][image] = reason
        write_json_atomic(self.dir / MANIFEST, self.manifest)
