"""Several processes on one run: ``torchrun`` ranks (one per GPU, on one or many nodes).

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), every command
joins one process group (NCCL on CUDA, gloo on CPU), takes every ``world``-th pending image, and
writes its own shard of the run folder (:mod:`neuronpath.io.store`); the main rank prepares the
folder before the others start and merges the shards when all are done.  The main rank's
progress bar shows the whole run: it adds up the per-rank counts the others write to
``progress.rank{r}.json``.  Without ``torchrun`` everything is one process, as before.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import InputError, option
from ..io.images import Batch, ImageItem, image_batches
from ..io.store import RunStore, write_json_atomic

log = logging.getLogger("neuronpath")

PROGRESS = "progress.rank{}.json"


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks of a run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence) -> list:
        """This rank's items: every ``world``-th, starting at ``rank`` (deterministic)."""
        return list(items[self.rank :: self.world])

    def barrier(self) -> None:
        if self.world > 1:
            if dist.get_backend() == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def report(self, folder: Path, done: int, finished: bool = False) -> None:
        """A non-main rank's progress, for the main rank's bar."""
        if not self.main:
            write_json_atomic(
                folder / PROGRESS.format(self.rank), {"done": done, "finished": finished}
            )

    def others_done(self, folder: Path) -> tuple[int, bool]:
        """Main rank: images the other ranks have finished, and whether all of them are done."""
        done, finished = 0, True
        for rank in range(1, self.world):
            path = folder / PROGRESS.format(rank)
            try:
                state = json.loads(path.read_text())
            except (OSError, ValueError):
                state = {"done": 0, "finished": False}
            done += state["done"]
            finished &= state["finished"]
        return done, finished

    def wait_for_others(self, folder: Path, on_progress) -> None:
        """Main rank: follow the other ranks' progress until all are done, then remove their
        progress files; every rank then meets at a barrier."""
        if self.world == 1:
            return
        if self.main:
            while True:
                done, finished = self.others_done(folder)
                on_progress(done)
                if finished:
                    break
                time.sleep(0.2)
        self.barrier()
        if self.main:
            for rank in range(1, self.world):
                (folder / PROGRESS.format(rank)).unlink(missing_ok=True)


def join_ranks(device: torch.device) -> Ranks:
    """This process's :class:`Ranks`; under ``torchrun`` the process group is joined (once)
    and a CUDA device becomes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2)
        )
    if rank != 0:  # one voice on the console: the main rank's
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.WARNING)
    return Ranks(rank, world, device)


def leave_ranks() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def open_store(ranks: Ranks, folder: str | Path, manifest: dict) -> RunStore:
    """The run folder for every rank: the main rank checks or creates it (and merges what an
    interrupted job left), the others join once it is ready."""
    store = RunStore(folder, manifest) if ranks.main else None
    ranks.barrier()
    return store or RunStore(folder, manifest, rank=ranks.rank)


def loader_workers(workers: int | None, device: torch.device) -> int:
    """Decoding processes per rank: as asked, or by default none on a CPU (decoding would take
    cores from the computation) and up to 4 beside a GPU."""
    if workers is not None:
        if workers < 0:
            raise InputError(
                f"{option('workers')}: expected a number of processes >= 0, got {workers}"
            )
        return workers
    if device.type != "cuda":
        return 0
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(4, per_rank - 1))


def work_through(
    ranks: Ranks,
    store: RunStore,
    pending: Sequence[ImageItem],
    preprocess,
    execution,
    handle,
    order: Sequence[str],
    desc: str,
    skip_unreadable: bool = True,
) -> None:
    """Run ``handle(batch)`` over this rank's share of ``pending`` in decoded batches of
    ``execution.batch_size`` (:class:`~.common.Execution`), with a progress bar of the whole run
    on the main rank; then wait for every rank and (main rank)
    merge the shards, records ordered as ``order`` (image ids) lists them.  With
    ``skip_unreadable`` an unreadable image is reported, listed as skipped in ``store`` and
    left out of ``batch.errors`` (``handle`` sees only batches with readable images); without,
    ``handle`` gets the errors.  The run folder's lock is released at the end, also when the
    work fails."""
    try:
        # Every rank has listed what it found done before any rank writes: each takes its share
        # of the same list (a rank that listed after another's first write would skip an image
        # the other never takes, and take one it did).
        ranks.barrier()
        _work(
            ranks,
            store,
            pending,
            preprocess,
            execution.batch_size,
            execution.workers,
            handle,
            desc,
            execution.progress,
            skip_unreadable,
        )
        if ranks.main and ranks.world > 1:
            store.consolidate({image: i for i, image in enumerate(order)})
        if ranks.main:  # also those of the ranks of an earlier, killed job of another size
            for path in store.dir.glob(PROGRESS.format("*")):
                path.unlink(missing_ok=True)
    finally:
        store.close()


def _work(
    ranks: Ranks,
    store: RunStore,
    pending: Sequence[ImageItem],
    preprocess,
    batch_size: int,
    workers: int | None,
    handle,
    desc: str,
    progress: bool | None,
    skip_unreadable: bool,
) -> None:
    mine = ranks.share(pending)
    done = 0
    disable = not ranks.main or (None if progress is None else not progress)
    with tqdm(total=len(pending), unit="img", desc=desc, disable=disable) as bar:

        def show(others: int) -> None:
            bar.n = done + others
            bar.refresh()

        for batch in image_batches(
            mine,
            preprocess,
            batch_size,
            loader_workers(workers, ranks.device),
            pin_memory=ranks.device.type == "cuda",
        ):
            done += len(batch.items) + len(batch.errors)
            if skip_unreadable:
                for item, error in batch.errors:
                    log.warning("skipping %s", error)
                    store.skip(item.id, str(error))
                batch = Batch(batch.items, batch.pixels, [])
            if batch.items or batch.errors:
                handle(batch)
            ranks.report(store.dir, done)
            show(ranks.others_done(store.dir)[0] if ranks.main and ranks.world > 1 else 0)
        ranks.report(store.dir, done, finished=True)
        ranks.wait_for_others(store.dir, show)
