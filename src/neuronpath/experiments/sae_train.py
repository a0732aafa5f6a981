"""``neuronpath sae train``: TopK sparse autoencoders (Gao et al. 2024) of a model's sites, for
models with no published SAE, trained as SAELens and saev train them and written in the SAELens
layout (:mod:`neuronpath.models.sae_files`).

Per chosen layer one SAE reads the site -- the FFN hidden state (``--site ffn``, the neurons'
site) or the residual stream after the block (``--site resid``) -- at every token of every image
(``--tokens all``, as published vision SAEs are trained) or at the positions a path reads
(``--tokens read``).  The fit itself (TopK, AuxK, unit-norm decoder rows with the parallel
gradient removed, the learning-rate schedule) is :mod:`neuronpath.engine.sae_fit`.

**Images.**  A seeded ``--held-out`` share of the images is set aside and never trained on; the
quality is measured on it.  The others are read in a seeded order per epoch.

**A shuffle buffer.**  Image batches are read until ``--buffer`` vectors (with those left over
from the previous buffer) are gathered; they are shuffled (seeded by epoch and buffer) and cut
into steps of exactly ``--sae-batch`` vectors, each step drawn from many images; the remainder
is carried into the next buffer, across epochs.  What is left at the very end (fewer than
``--sae-batch`` vectors) is not trained on and is counted in the report.  b_dec starts at the
mean of the first buffer.  The training length is ``--epochs`` passes; the report states it in
vectors and steps.

**Resumable.**  The SAEs, Adam's state and the position (epoch, buffer, steps done in it, the
vectors carried into it) are written to ``OUT/state.pt`` (atomically) every ``--save-steps``
steps and whenever ``--save-every`` seconds have passed since the last save (0: after every
step).  A killed run started again reads that buffer's images again and ends with the same
weights, bit for bit, as a run never stopped (every shuffle is seeded by its place, not by the
past).

**Written** (``OUT``): ``layerLL/`` per layer (``cfg.json`` + ``sae_weights.safetensors``),
``saes.txt`` (lines ``LAYER PATH``, for ``find --units sae --sae OUT/saes.txt``) and
``report.json``/``report.md``: per layer, on the held-out images and with the final weights,
the fraction of variance unexplained centred on the mean of all held-out vectors (FVU) at the
positions a path reads and at every token, L0, the shares of dead latents (never active) and
dense ones (active on more than a tenth of the vectors), and the model's accuracy, mean
cross-entropy and mean P(label) with that layer's site replaced by its SAE's reconstruction
(spliced in, at the trained tokens) beside the clean model's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..engine.interventions import record_neurons
from ..engine.sae import SAE_SITES, SparseAutoencoder
from ..engine.sae_fit import FitSums, Recipe, init_params, learning_rate, train_step
from ..errors import InputError, RunConflictError, RunFormatError, option
from ..io.images import image_batches
from ..io.sources import DataSpec, as_data
from ..io.store import RunLock, read_json, write_json_atomic
from ..models.loading import load_model
from ..models.sae_files import save_saelens
from ..models.spec import ModelSpec
from ..options import FLOAT_LIMIT, names, nested, setting
from .common import Execution, resolve_device, versions

log = logging.getLogger("neuronpath")
STATE, REPORT = "state.pt", "report.json"
TOKENS = ("all", "read")


@dataclass(frozen=True)
class SAETrainOptions:
    """What the SAEs are and how they are trained (module docstring)."""

    site: str = setting("ffn", "the site the SAEs read: ffn or resid", choices=SAE_SITES)
    layers: tuple[str, ...] | None = setting(
        None, "comma-separated layers, 0-based (default: every layer)", parse=names
    )
    latents: int | None = setting(None, "latents per SAE (default: 4 x the site's width)", type=int)
    k: int = setting(32, "latents kept per vector (TopK)", type=int)
    epochs: int = setting(4, "passes over the training images", type=int)
    lr: float = setting(1e-3, "Adam's peak learning rate", type=float)
    sae_batch: int = setting(
        1024, "vectors per optimiser step (every step holds this many)", type=int
    )
    buffer: int = setting(
        16384,
        "vectors gathered from many images and shuffled before they are cut into steps",
        type=int,
    )
    aux_k: int | None = setting(
        None,
        "dead latents that rebuild the error in AuxK (default: half the site's width)",
        type=int,
    )
    aux_coef: float = setting(1 / 32, "weight of the AuxK loss (0: none)", type=float)
    dead_after: int = setting(
        65536, "vectors a latent goes without firing before AuxK treats it as dead", type=int
    )
    warmup: float = setting(0.05, "share of the steps the learning rate rises over", type=float)
    decay: float = setting(
        0.2, "share of the steps at the end the learning rate falls to zero over", type=float
    )
    held_out: float = setting(
        0.1, "share of the images never trained on, where the quality is measured", type=float
    )
    tokens: str = setting(
        "all", "the tokens trained on: all, or read (where a path reads)", choices=TOKENS
    )
    limit: int | None = setting(None, "at most this many images (the first, in order)", type=int)
    seed: int = setting(
        0, "seed of the initialisation, the held-out images and every shuffle", type=int
    )

    def __post_init__(self):
        for name in ("k", "epochs", "sae_batch", "buffer", "dead_after"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
        for name in ("latents", "aux_k", "limit"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
        if self.sae_batch > self.buffer:
            raise InputError(
                f"{option('sae_batch')}: expected at most {option('buffer')} ({self.buffer}), "
                f"got {self.sae_batch}"
            )
        if not 0 < self.lr <= FLOAT_LIMIT:  # NaN and inf fail here too
            raise InputError(
                f"{option('lr')}: expected a finite learning rate > 0, got {self.lr!r}"
            )
        if not 0 <= self.aux_coef <= FLOAT_LIMIT:
            raise InputError(
                f"{option('aux_coef')}: expected a finite weight >= 0, got {self.aux_coef!r}"
            )
        for name in ("warmup", "decay"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(
                    f"{option(name)}: expected a share from 0 to 1, got {getattr(self, name)!r}"
                )
        if not self.warmup + self.decay <= 1:
            raise InputError(
                f"{option('warmup')} + {option('decay')}: expected at most 1, got "
                f"{self.warmup + self.decay!r}"
            )
        if not 0 <= self.held_out < 1:
            raise InputError(
                f"{option('held_out')}: expected a share from 0 (up to, not including) 1, got "
                f"{self.held_out!r}"
            )
        if self.site not in SAE_SITES:
            raise InputError(
                f"{option('site')}: expected one of {list(SAE_SITES)}, got {self.site!r}"
            )
        if self.tokens not in TOKENS:
            raise InputError(
                f"{option('tokens')}: expected one of {list(TOKENS)}, got {self.tokens!r}"
            )
        if self.layers is not None and not self.layers:
            raise InputError(f"{option('layers')}: expected comma-separated layers, got none")

    def recipe(self) -> Recipe:
        return Recipe(
            k=self.k,
            lr=self.lr,
            aux_k=self.aux_k,
            aux_coef=self.aux_coef,
            dead_after=self.dead_after,
            warmup=self.warmup,
            decay=self.decay,
        )


@dataclass(frozen=True)
class SAETrainCommand:
    """train TopK sparse autoencoders of a model's sites (SAELens layout), resumable"""

    action: str = setting("train", "what to do: train", positional=True, choices=("train",))
    spec: ModelSpec = nested(ModelSpec, "model options")
    data: DataSpec = nested(DataSpec, "data options")
    out: str = setting(None, "the folder the SAEs are written to")
    options: SAETrainOptions = nested(SAETrainOptions)
    execution: Execution = nested(Execution, "how it runs")
    save_every: float = setting(
        60.0, "seconds between saves of the training state (0: after every step)", type=float
    )
    save_steps: int = setting(
        0, "also save the training state every N steps (0: not by steps)", type=int
    )


def _layers(options: SAETrainOptions, num_layers: int) -> list[int]:
    if options.layers is None:
        return list(range(num_layers))
    layers = []
    for text in options.layers:
        if not text.strip().isdigit() or not 0 <= int(text) < num_layers:
            raise InputError(
                f"{option('layers')}: {text!r} is not a layer; expected 0 .. {num_layers - 1}"
            )
        layers.append(int(text))
    return sorted(set(layers))


def _as_sae(params: dict, k: int, site: str, layer: int) -> SparseAutoencoder:
    return SparseAutoencoder(
        **{n: p.detach().clone() for n, p in params.items()},
        activation="topk",
        k=k,
        site=site,
        origin={"layer": layer},
    )


def _vectors(adapter, pixels, layers, tokens: str) -> dict[int, torch.Tensor]:
    with (
        torch.no_grad(),
        record_neurons(adapter, layers, all_tokens=tokens == "all", coordinates=True) as acts,
    ):
        adapter.logits(pixels)
    return {l: acts[l].reshape(-1, acts[l].shape[-1]).float().cpu() for l in layers}


def held_out_split(items, share: float, seed: int) -> tuple[list, list]:
    """(training, held-out): a seeded ``share`` of ``items`` held out (at least one image
    where the share is above 0), in their given order."""
    if share == 0:
        return list(items), []
    count = max(1, round(share * len(items)))
    if count >= len(items):
        raise InputError(
            f"{option('held_out')}: {share} of {len(items)} images leaves none to train on"
        )
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed * 31 + 7))
    held = set(order[:count].tolist())
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def _identity(adapter, folder, options: SAETrainOptions, layers) -> dict:
    listing = "\n".join(f"{it.id}\t{it.label}" for it in folder.items)
    return {
        "model": adapter.weights_hash(),
        "images": hashlib.sha256(listing.encode()).hexdigest(),
        "layers": layers,
        "options": {k: v for k, v in asdict(options).items() if k != "layers"},
        "preprocess": json.loads(json.dumps(adapter.preprocess.to_dict())),
    }


def run_sae_train(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: SAETrainOptions = SAETrainOptions(),
    execution: Execution = Execution(),
    save_every: float = 60.0,
    save_steps: int = 0,
) -> dict:
    """Train the SAEs (module docstring) into ``out``; returns the report.  A folder holding
    the same finished training is left as it is; one holding another is refused.
    ``save_every`` (seconds) and ``save_steps``: when the state is saved (neither changes the
    result)."""
    if not 0 <= save_every <= FLOAT_LIMIT:
        raise InputError(f"{option('save_every')}: expected seconds >= 0, got {save_every!r}")
    if not isinstance(save_steps, int) or save_steps < 0:
        raise InputError(f"{option('save_steps')}: expected steps >= 0, got {save_steps!r}")
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    if spec.units != "neurons":
        raise InputError(
            f"{option('units')}: sae train reads the model's own sites; expected neurons"
        )
    if out is None:
        raise InputError(f"{option('out')}: expected the folder the SAEs are written to")
    out = Path(out).expanduser()
    device = resolve_device(execution.device)
    adapter = load_model(spec, device=device)
    layers = _layers(options, adapter.num_layers)
    if options.site == "resid":
        adapter.read_residual(layers)
    folder = as_data(data).open(adapter.id2label, spec.labels)
    items = folder.items[: options.limit] if options.limit else folder.items
    if not items:
        raise InputError(f"{option('data')}: no images to train on")
    training, held = held_out_split(items, options.held_out, options.seed)
    fewest = min(options.latents or 4 * adapter.widths()[l] for l in layers)
    if options.k > fewest:  # refused before the folder is made
        raise InputError(f"{option('k')}: expected at most {fewest} (the latents)")
    identity = _identity(adapter, folder, options, layers)
    if (out / REPORT).is_file():
        done = _read_report(out / REPORT)
        if done.get("identity") == identity:
            log.info("sae train: %s already holds this training", out)
            return done
        raise RunConflictError(
            f"{out} holds another SAE training; use another {option('out')} folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out)
    try:
        trainer = _Trainer(adapter, training, layers, options, execution, out, identity)
        saes, trained = trainer.run(save_every, save_steps)
        return _finish(adapter, training, held, saes, trained, options, execution, out, identity)
    finally:
        lock.release()


LAYER_KEYS = (
    "latents",
    "k",
    "fvu_read",
    "fvu_all",
    "l0_read",
    "l0_all",
    "dead",
    "dense",
    "spliced_accuracy",
    "spliced_cross_entropy",
    "spliced_p_label",
)


def _read_report(path: Path) -> dict:
    """A finished training's ``report.json``, checked for every key the command reads of it:
    one line naming the file and the key where it is damaged."""
    remedy = f"restore it, or train into another {option('out')} folder"
    report = read_json(path, remedy, ("identity", "images", "clean", "layers"))
    if "trained" not in report:  # written before the held-out quality figures (issue 47)
        raise RunConflictError(
            f"{path.parent} holds an SAE training of an earlier neuronpath (its report has no "
            f"held-out quality figures); train into another {option('out')} folder"
        )

    def numbers(part, keys) -> bool:
        return isinstance(part, dict) and all(
            isinstance(part.get(k), (int, float)) and not isinstance(part.get(k), bool)
            for k in keys
        )

    layers = report["layers"]
    checks = {
        "clean": numbers(report["clean"], ("accuracy", "cross_entropy", "p_label")),
        "layers": isinstance(layers, dict) and all(numbers(r, LAYER_KEYS) for r in layers.values()),
        "identity": isinstance(report["identity"], dict),
        "trained": numbers(report["trained"], ("images", "vectors", "steps", "dropped")),
    }
    for key, ok in checks.items():
        if not ok:
            raise RunFormatError(f"{path} is damaged ({key} is not as written); {remedy}")
    return report


STATE_KEYS = {
    "identity": dict,
    "epoch": int,
    "start": int,
    "fill": int,
    "done": int,
    "step": int,
    "total": int,
    "variance": dict,
    "carry": dict,
    "params": dict,
    "adam": dict,
    "since_fired": dict,
}


def _read_state(path: Path) -> dict:
    """The training state a killed ``sae train`` left (:data:`STATE_KEYS`), or one line naming
    the file where it cannot be read as one."""
    remedy = f"delete it to start the training again, or train into another {option('out')}"
    try:
        state = torch.load(path, weights_only=False)
    except Exception as error:  # noqa: BLE001 - garbage: unpickling raises any of many kinds
        raise RunFormatError(f"{path} is damaged ({type(error).__name__}); {remedy}") from None
    for key, kind in STATE_KEYS.items():
        if not isinstance(state, dict) or not isinstance(state.get(key), kind):
            raise RunFormatError(
                f"{path} is damaged ({key} missing or not a {kind.__name__}); {remedy}"
            )
    return state


class _Trainer:
    """The streamed, resumable training of every chosen layer's SAE (module docstring)."""

    def __init__(self, adapter, items, layers, options, execution, out, identity):
        self.adapter, self.items, self.layers = adapter, items, layers
        self.options, self.execution, self.identity = options, execution, identity
        self.recipe = options.recipe()
        widths = adapter.widths()
        self.width_of = {l: options.latents or 4 * widths[l] for l in layers}
        self.d_in = {l: widths[l] for l in layers}
        self.state_path = out / STATE
        self.params = self.optimisers = None
        self.variance, self.since_fired = {}, {}
        # the position: epoch, where its current buffer starts (in the epoch's order), which
        # buffer of the epoch, steps done in it, steps done in all
        self.epoch = self.start = self.fill = self.done = self.step = 0
        self.total = 0  # steps in all (known after the first buffer)
        self.carry = {l: torch.zeros(0, self.d_in[l]) for l in layers}

    def order(self, epoch: int) -> list:
        g = torch.Generator().manual_seed(self.options.seed * 7919 + epoch)
        return [self.items[i] for i in torch.randperm(len(self.items), generator=g)]

    def resume(self) -> None:
        if not self.state_path.is_file():
            return
        state = _read_state(self.state_path)
        if state["identity"] != self.identity:
            raise RunConflictError(
                f"{self.state_path.parent} holds another SAE training ({self.state_path}); use "
                f"another {option('out')} folder"
            )
        for key in ("epoch", "start", "fill", "done", "step", "total"):
            setattr(self, key, state[key])
        self.variance, self.carry = state["variance"], state["carry"]
        self.params, self.since_fired = state["params"], state["since_fired"]
        self._optimisers(state["adam"])
        log.info(
            "sae train: resuming at epoch %d, buffer %d, step %d", self.epoch, self.fill, self.step
        )

    def _optimisers(self, saved=None) -> None:
        self.optimisers = {
            l: torch.optim.Adam(self.params[l].values(), lr=self.recipe.lr) for l in self.layers
        }
        for l in self.layers if saved else ():
            self.optimisers[l].load_state_dict(saved[l])

    def save(self) -> None:
        _save_state(
            self.state_path,
            {
                "identity": self.identity,
                "epoch": self.epoch,
                "start": self.start,
                "fill": self.fill,
                "done": self.done,
                "step": self.step,
                "total": self.total,
                "variance": self.variance,
                "carry": self.carry,
                "params": self.params,
                "adam": {l: o.state_dict() for l, o in self.optimisers.items()},
                "since_fired": self.since_fired,
            },
        )

    def gather(self, order: list) -> tuple[dict, int, int]:
        """The vectors of the images from ``self.start`` on, whole image batches, until the
        carried and new vectors reach ``--buffer`` or the epoch ends: (vectors per layer,
        where the next buffer starts, images read)."""
        need = self.options.buffer - len(next(iter(self.carry.values())))
        batch, got, parts, position, read = self.execution.batch_size, 0, [], self.start, 0
        if need > 0:
            for chunk in image_batches(order[self.start :], self.adapter.preprocess, batch):
                position += batch  # a chunk is the next ``batch`` images, unreadable ones too
                for item, error in chunk.errors:
                    log.warning("sae train: skipping %s: %s", item.path, error)
                if chunk.items:
                    pixels = chunk.pixels.to(self.adapter.device, self.adapter.dtype)
                    parts.append(_vectors(self.adapter, pixels, self.layers, self.options.tokens))
                    got += len(next(iter(parts[-1].values())))
                    read += len(chunk.items)
                if got >= need:
                    break
        vectors = {l: torch.cat([self.carry[l], *[p[l] for p in parts]]) for l in self.layers}
        return vectors, position, read

    def begin(self, vectors: dict, read: int) -> None:
        """The first buffer: b_dec at its mean, the loss's variance, the number of steps."""
        first = vectors[self.layers[0]]
        per_image = len(first) / max(read, 1)
        self.total = max(
            1, int(per_image * len(self.items) * self.options.epochs) // self.options.sae_batch
        )
        self.params = {}
        for l in self.layers:
            mean = vectors[l].mean(0)
            self.variance[l] = float((vectors[l] - mean).pow(2).sum(-1).mean().clamp_min(1e-12))
            self.params[l] = init_params(self.d_in[l], self.width_of[l], self.options.seed, l, mean)
            self.since_fired[l] = torch.zeros(self.width_of[l], dtype=torch.long)
        self._optimisers()

    def run(self, save_every: float, save_steps: int) -> tuple[dict, dict]:
        self.resume()
        size = self.options.sae_batch
        bar = tqdm(
            desc="sae train",
            unit="step",
            initial=self.step,
            disable=None if self.execution.progress is None else not self.execution.progress,
        )
        saved = time.monotonic()
        while self.epoch < self.options.epochs:
            order = self.order(self.epoch)
            if self.start >= len(order):
                self.epoch, self.start, self.fill = self.epoch + 1, 0, 0
                log.info(
                    "sae train: epoch %d of %d done (step %d of about %d)",
                    self.epoch,
                    self.options.epochs,
                    self.step,
                    self.total,
                )
                continue
            vectors, end, read = self.gather(order)
            if self.params is None:
                if not len(vectors[self.layers[0]]):
                    break
                self.begin(vectors, read)
            bar.total = self.total
            g = torch.Generator().manual_seed(
                self.options.seed * 104729 + self.epoch * 10007 + self.fill
            )
            n = len(vectors[self.layers[0]])
            shuffled = torch.randperm(n, generator=g)
            for s in range(self.done, n // size):
                rows = shuffled[s * size : (s + 1) * size]
                lr = learning_rate(self.recipe, self.step, self.total)
                for l in self.layers:
                    train_step(
                        self.params[l],
                        self.optimisers[l],
                        vectors[l][rows],
                        self.recipe,
                        self.since_fired[l],
                        self.variance[l],
                        lr,
                    )
                self.step, self.done = self.step + 1, s + 1
                bar.update(1)
                due = save_steps and self.step % save_steps == 0
                if due or time.monotonic() - saved >= save_every:
                    self.save()
                    saved = time.monotonic()
            left = shuffled[(n // size) * size :]
            self.carry = {l: vectors[l][left] for l in self.layers}
            self.start, self.fill, self.done = end, self.fill + 1, 0
        bar.close()
        if self.params is None:
            raise InputError(f"{option('data')}: none of the {len(self.items)} images can be read")
        trained = {
            "images": len(self.items),
            "vectors": self.step * size,
            "steps": self.step,
            "dropped": len(next(iter(self.carry.values()))),  # never trained on
            "recipe": self.recipe.describe(),
        }
        saes = {
            l: _as_sae(self.params[l], self.options.k, self.options.site, l) for l in self.layers
        }
        return saes, trained


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def measure(adapter, items, saes: dict, tokens: str, batch: int) -> dict:
    """On ``items``, with the SAEs as they are: per layer the :class:`FitSums` at the read
    positions and at every token, and the model with each layer's site spliced (``tokens``),
    beside the clean model: {"layers": {l: {...}}, "clean": {...}, "images": n}."""
    layers = list(saes)
    read = {l: FitSums(saes[l].width) for l in layers}
    every = {l: FitSums(saes[l].width) for l in layers}
    trained = every if tokens == "all" else read
    outcome = {key: {"correct": 0, "loss": 0.0, "p": 0.0} for key in (None, *layers)}
    seen = 0
    for chunk in image_batches(items, adapter.preprocess, batch):
        for item, error in chunk.errors:
            log.warning("sae train: skipping %s: %s", item.path, error)
        if not chunk.items:
            continue
        pixels = chunk.pixels.to(adapter.device, adapter.dtype)
        labels = torch.tensor([it.label for it in chunk.items])
        with (
            torch.no_grad(),
            record_neurons(adapter, layers, all_tokens=True, coordinates=True) as acts,
        ):
            adapter.logits(pixels)
        for l, sae in saes.items():
            x = acts[l].float().cpu()
            for sums, part in ((every[l], x), (read[l], adapter.token_at(l).select(x))):
                f = sae.encode(part)
                sums.add(part, sae.decode(f, part), f)
        for l in (None, *layers):
            with torch.no_grad(), _spliced(adapter, l, saes.get(l), tokens):
                logits = adapter.logits(pixels).float().cpu()
            o = outcome[l]
            o["correct"] += int((logits.argmax(-1) == labels).sum())
            o["loss"] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            o["p"] += float(logits.softmax(-1).gather(1, labels[:, None]).sum())
        seen += len(chunk.items)
    if not seen:
        raise InputError(
            f"{option('data')}: none of the {len(items)} images to measure on can be read"
        )

    def model(o):
        return {
            "accuracy": o["correct"] / seen,
            "cross_entropy": o["loss"] / seen,
            "p_label": o["p"] / seen,
        }

    return {
        "images": seen,
        "clean": model(outcome[None]),
        "layers": {
            l: {
                "latents": saes[l].width,
                "k": saes[l].k,
                "fvu_read": read[l].fvu(),
                "fvu_all": every[l].fvu(),
                "l0_read": read[l].l0(),
                "l0_all": every[l].l0(),
                "vectors_read": read[l].n,
                "vectors_all": every[l].n,
                "dead": trained[l].dead(),
                "dense": trained[l].dense(),
                **{f"spliced_{k}": v for k, v in model(outcome[l]).items()},
            }
            for l in layers
        },
    }


def _finish(adapter, training, held, saes, trained, options, execution, out, identity) -> dict:
    """Write the SAEs and measure them (module docstring)."""
    hooks = {"ffn": "blocks.{}.mlp.hook_post", "resid": "blocks.{}.hook_resid_post"}
    model_name = adapter.name
    folders = {}
    for l, sae in saes.items():
        folders[l] = save_saelens(
            sae, out / f"layer{l:02d}", hook=hooks[options.site].format(l), model_name=model_name
        )
    (out / "saes.txt").write_text("".join(f"{l} {folders[l].name}\n" for l in saes))
    on = held or training
    measured = measure(adapter, on, saes, options.tokens, execution.batch_size)
    report = {
        "identity": identity,
        "measured_on": "held-out images" if held else "the training images (--held-out 0)",
        "images": measured["images"],
        "held_out": [str(it.id) for it in held],
        "trained": trained,
        "clean": measured["clean"],
        "layers": {str(l): {"folder": str(folders[l]), **r} for l, r in measured["layers"].items()},
        "versions": versions(),
    }
    write_json_atomic(out / REPORT, report)
    (out / "report.md").write_text(report_table(report))
    (out / STATE).unlink(missing_ok=True)
    return report


def report_table(report: dict) -> str:
    clean, trained = report["clean"], report["trained"]
    first = next(iter(report["layers"].values()))
    lines = [
        f"SAEs trained on {trained['images']} images ({trained['vectors']} vectors in "
        f"{trained['steps']} steps, {trained['dropped']} left over); measured on "
        f"{report['images']} {report['measured_on']} with the final weights "
        f"({first['vectors_read']} vectors at the read positions, {first['vectors_all']} in all; "
        f"dead and dense over the trained tokens). Clean model: "
        f"accuracy {clean['accuracy']:.3f}, cross-entropy {clean['cross_entropy']:.3f}, "
        f"P(label) {clean['p_label']:.3f}",
        "",
        "| layer | latents | k | FVU at read positions | FVU, all tokens | L0 read / all | dead "
        "| dense | accuracy, spliced | cross-entropy, spliced | P(label), spliced |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for l, r in report["layers"].items():
        lines.append(
            f"| {l} | {r['latents']} | {r['k']} | {r['fvu_read']:.3f} | {r['fvu_all']:.3f} | "
            f"{r['l0_read']:.1f} / {r['l0_all']:.1f} | {r['dead']:.3f} | {r['dense']:.3f} | "
            f"{r['spliced_accuracy']:.3f} | {r['spliced_cross_entropy']:.3f} | "
            f"{r['spliced_p_label']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _spliced(adapter, layer, sae, tokens: str):
    """A context in which ``layer``'s site is replaced by ``sae``'s reconstruction (at every
    token, or at the read positions); ``layer`` None: the clean model."""
    if layer is None:
        return contextlib.nullcontext()
    token = adapter.token_at(layer)

    def hook(hidden):
        if tokens == "all":
            return sae.decode(sae.encode(hidden), hidden).to(hidden.dtype)
        selected = token.select(hidden)
        return token.insert(hidden, sae.decode(sae.encode(selected), selected).to(hidden.dtype))

    return adapter.hooks({layer: hook})
