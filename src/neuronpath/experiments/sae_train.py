"""``neuronpath sae train``: TopK sparse autoencoders (Gao et al. 2024) of a model's sites, for
models with no published SAE, written in the SAELens layout (:mod:`neuronpath.models.sae_files`).

Per chosen layer one SAE reads the site -- the FFN hidden state (``--site ffn``, the neurons'
site) or the residual stream after the block (``--site resid``) -- at every token of every image
(``--tokens all``, as published vision SAEs are trained) or at the positions a path reads
(``--tokens read``).  The encoder is f(x) = TopK(ReLU(W_enc^T (x - b_dec) + b_enc)), the decoder
f W_dec + b_dec with unit-norm rows; the loss is the reconstruction's squared error over the
batch's variance (the fraction of variance unexplained, FVU), minimised with Adam.  Initialisation
(seeded): W_dec's rows random unit vectors, W_enc = W_dec^T, b_dec the first batch's mean.

**Streamed and resumable.**  The images are read in a seeded order per epoch, one batch of
``--batch-size`` images at a time; each batch's vectors are shuffled (seeded by epoch and batch)
and cut into steps of ``--sae-batch`` vectors.  The SAEs, Adam's state and the position are
written to ``OUT/state.pt`` (atomically) after an image batch once ``--save-every`` seconds have
passed since the last save (0: after every batch), and at the end of every epoch; a killed run
started again redoes the batches after its last save and ends with the same weights, bit for
bit, as a run never stopped (every shuffle is seeded by its epoch and batch, not by the past).

**Written** (``OUT``): ``layerLL/`` per layer (``cfg.json`` + ``sae_weights.safetensors``),
``saes.txt`` (lines ``LAYER PATH``, for ``find --units sae --sae OUT/saes.txt``) and
``report.json``/``report.md``: per layer the FVU and the share of dead latents (never active over
the last epoch), and the model's accuracy and mean cross-entropy over the images with that
layer's site replaced by its SAE's reconstruction (spliced in) beside the clean model's.
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
    epochs: int = setting(4, "passes over the images", type=int)
    lr: float = setting(1e-3, "Adam's learning rate", type=float)
    sae_batch: int = setting(1024, "vectors per optimiser step", type=int)
    tokens: str = setting(
        "all", "the tokens trained on: all, or read (where a path reads)", choices=TOKENS
    )
    limit: int | None = setting(None, "at most this many images (the first, in order)", type=int)
    seed: int = setting(0, "seed of the initialisation and of every shuffle", type=int)

    def __post_init__(self):
        for name in ("k", "epochs", "sae_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
        if self.latents is not None and (not isinstance(self.latents, int) or self.latents < 1):
            raise InputError(
                f"{option('latents')}: expected a positive integer, got {self.latents!r}"
            )
        if not 0 < self.lr <= FLOAT_LIMIT:  # NaN and inf fail here too
            raise InputError(
                f"{option('lr')}: expected a finite learning rate > 0, got {self.lr!r}"
            )
        if self.site not in SAE_SITES:
            raise InputError(
                f"{option('site')}: expected one of {list(SAE_SITES)}, got {self.site!r}"
            )
        if self.tokens not in TOKENS:
            raise InputError(
                f"{option('tokens')}: expected one of {list(TOKENS)}, got {self.tokens!r}"
            )
        if self.limit is not None and self.limit < 1:
            raise InputError(f"{option('limit')}: expected a positive integer, got {self.limit}")
        if self.layers is not None and not self.layers:
            raise InputError(f"{option('layers')}: expected comma-separated layers, got none")


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
        60.0, "seconds between saves of the training state (0: after every image batch)", type=float
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


def _init(d_in: int, width: int, seed: int, layer: int, mean: torch.Tensor):
    g = torch.Generator().manual_seed(seed * 1000 + layer)
    w_dec = torch.randn(width, d_in, generator=g, dtype=torch.float32)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params = {
        "w_enc": w_dec.T.clone(),
        "b_enc": torch.zeros(width),
        "w_dec": w_dec,
        "b_dec": mean.float().clone(),
    }
    return {n: p.requires_grad_(True) for n, p in params.items()}


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


def _identity(adapter, folder, options: SAETrainOptions, layers) -> dict:
    listing = "\n".join(f"{it.id}\t{it.label}" for it in folder.items)
    return {
        "model": adapter.weights_hash(),
        "images": hashlib.sha256(listing.encode()).hexdigest(),
        "layers": layers,
        "options": {k: v for k, v in asdict(options).items() if k != "layers"},
        "preprocess": json.loads(json.dumps(adapter.preprocess.to_dict())),
    }


def _fvu(sae: SparseAutoencoder, x: torch.Tensor) -> tuple[float, float]:
    """(squared error, total variance) sums of ``x``'s reconstruction."""
    error = (sae.decode(sae.encode(x), x) - x).pow(2).sum()
    return float(error), float((x - x.mean(0)).pow(2).sum())


def run_sae_train(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: SAETrainOptions = SAETrainOptions(),
    execution: Execution = Execution(),
    save_every: float = 60.0,
) -> dict:
    """Train the SAEs (module docstring) into ``out``; returns the report.  A folder holding
    the same finished training is left as it is; one holding another is refused.
    ``save_every``: seconds between saves of the state (it does not change the result)."""
    if not save_every >= 0:
        raise InputError(f"{option('save_every')}: expected seconds >= 0, got {save_every!r}")
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
        return _train(adapter, items, layers, options, execution, out, identity, save_every)
    finally:
        lock.release()


LAYER_KEYS = ("latents", "k", "fvu", "dead", "spliced_accuracy", "spliced_cross_entropy")


def _read_report(path: Path) -> dict:
    """A finished training's ``report.json``, checked for every key the command reads of it:
    one line naming the file and the key where it is damaged."""
    remedy = f"restore it, or train into another {option('out')} folder"
    report = read_json(path, remedy, ("identity", "images", "clean", "layers"))

    def numbers(part, keys) -> bool:
        return isinstance(part, dict) and all(
            isinstance(part.get(k), (int, float)) and not isinstance(part.get(k), bool)
            for k in keys
        )

    layers = report["layers"]
    checks = {
        "clean": numbers(report["clean"], ("accuracy", "cross_entropy")),
        "layers": isinstance(layers, dict) and all(numbers(r, LAYER_KEYS) for r in layers.values()),
        "identity": isinstance(report["identity"], dict),
    }
    for key, ok in checks.items():
        if not ok:
            raise RunFormatError(f"{path} is damaged ({key} is not as written); {remedy}")
    return report


STATE_KEYS = {
    "identity": dict,
    "epoch": int,
    "batch": int,
    "params": dict,
    "adam": dict,
    "fired": dict,
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


def _train(adapter, items, layers, options, execution, out, identity, save_every) -> dict:
    widths = dict(enumerate(adapter.widths()))
    width_of = {l: options.latents or 4 * widths[l] for l in layers}
    state_path = out / STATE
    state = None
    if state_path.is_file():
        state = _read_state(state_path)
        if state.get("identity") != identity:
            raise RunConflictError(
                f"{out} holds another SAE training ({state_path}); use another "
                f"{option('out')} folder"
            )
        log.info("sae train: resuming at epoch %d, batch %d", state["epoch"], state["batch"])
    params = state["params"] if state else None
    optimisers = None
    epoch0, batch0 = (state["epoch"], state["batch"]) if state else (0, 0)
    fired = state["fired"] if state else {}  # reset below at the start of every epoch
    batch = execution.batch_size
    n_batches = (len(items) + batch - 1) // batch
    bar = tqdm(
        total=options.epochs * n_batches,
        initial=epoch0 * n_batches + batch0,
        desc="sae train",
        unit="batch",
        disable=None if execution.progress is None else not execution.progress,
    )
    saved = time.monotonic()
    for epoch in range(epoch0, options.epochs):
        order = torch.randperm(
            len(items), generator=torch.Generator().manual_seed(options.seed * 7919 + epoch)
        )
        ordered = [items[i] for i in order]
        start = batch0 if epoch == epoch0 else 0
        if epoch != epoch0 or start == 0:
            fired = {l: torch.zeros(width_of[l], dtype=torch.long) for l in layers}
        for b, chunk in enumerate(
            image_batches(ordered[start * batch :], adapter.preprocess, batch), start
        ):
            for item, error in chunk.errors:
                log.warning("sae train: skipping %s: %s", item.path, error)
            if chunk.items:
                vectors = _vectors(
                    adapter, chunk.pixels.to(adapter.device, adapter.dtype), layers, options.tokens
                )
                if params is None:
                    params = {
                        l: _init(widths[l], width_of[l], options.seed, l, vectors[l].mean(0))
                        for l in layers
                    }
                if optimisers is None:
                    optimisers = {
                        l: torch.optim.Adam(params[l].values(), lr=options.lr) for l in layers
                    }
                    if state:
                        for l in layers:
                            optimisers[l].load_state_dict(state["adam"][l])
                perm_seed = options.seed * 104729 + epoch * 10007 + b
                for l in layers:
                    _steps(params[l], optimisers[l], vectors[l], options, perm_seed, fired[l])
            state = {
                "identity": identity,
                "epoch": epoch,
                "batch": b + 1,
                "params": params,
                "adam": {l: o.state_dict() for l, o in (optimisers or {}).items()},
                "fired": fired,
            }
            if b + 1 == n_batches:
                state.update(epoch=epoch + 1, batch=0)
            if b + 1 == n_batches or time.monotonic() - saved >= save_every:
                _save_state(state_path, state)
                saved = time.monotonic()
            bar.update(1)
        batch0 = 0
    bar.close()
    if params is None:
        raise InputError(f"{option('data')}: none of the {len(items)} images can be read")
    saes = {l: _as_sae(params[l], options.k, options.site, l) for l in layers}
    return _finish(adapter, items, saes, fired, options, execution, out, identity)


def _steps(params, optimiser, x, options, seed, fired) -> None:
    """One pass of Adam steps over the batch's vectors ``x`` in a seeded order."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    for start in range(0, x.shape[0], options.sae_batch):
        rows = x[order[start : start + options.sae_batch]]
        sae = SparseAutoencoder(**params, activation="topk", k=options.k)
        f = sae.encode(rows)
        error = (f @ params["w_dec"] + params["b_dec"] - rows).pow(2).sum()
        loss = error / (rows - rows.mean(0)).pow(2).sum().clamp_min(1e-12)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            params["w_dec"] /= params["w_dec"].norm(dim=-1, keepdim=True)
            fired += (f > 0).sum(0).to(fired.dtype)


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _finish(adapter, items, saes, fired, options, execution, out, identity) -> dict:
    """Write the SAEs and measure them (module docstring)."""
    hooks = {"ffn": "blocks.{}.mlp.hook_post", "resid": "blocks.{}.hook_resid_post"}
    folders = {}
    for l, sae in saes.items():
        folders[l] = save_saelens(sae, out / f"layer{l:02d}", hook=hooks[options.site].format(l))
    (out / "saes.txt").write_text("".join(f"{l} {folders[l].name}\n" for l in saes))
    sums = {l: [0.0, 0.0] for l in saes}
    correct, loss = {None: 0, **dict.fromkeys(saes, 0)}, {None: 0.0, **dict.fromkeys(saes, 0.0)}
    seen = 0
    for chunk in image_batches(items, adapter.preprocess, execution.batch_size):
        if not chunk.items:
            continue
        pixels = chunk.pixels.to(adapter.device, adapter.dtype)
        labels = torch.tensor([it.label for it in chunk.items])
        vectors = _vectors(adapter, pixels, list(saes), options.tokens)
        for l, sae in saes.items():
            e, v = _fvu(sae, vectors[l])
            sums[l][0] += e
            sums[l][1] += v
        for l in (None, *saes):
            with torch.no_grad(), _spliced(adapter, l, saes.get(l), options.tokens):
                logits = adapter.logits(pixels).float().cpu()
            correct[l] += int((logits.argmax(-1) == labels).sum())
            loss[l] += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
        seen += len(chunk.items)
    report = {
        "identity": identity,
        "images": seen,
        "clean": {"accuracy": correct[None] / seen, "cross_entropy": loss[None] / seen},
        "layers": {
            str(l): {
                "folder": str(folders[l]),
                "latents": saes[l].width,
                "k": options.k,
                "fvu": sums[l][0] / max(sums[l][1], 1e-12),
                "dead": float((fired[l] == 0).float().mean()),
                "spliced_accuracy": correct[l] / seen,
                "spliced_cross_entropy": loss[l] / seen,
            }
            for l in saes
        },
        "versions": versions(),
    }
    write_json_atomic(out / REPORT, report)
    (out / "report.md").write_text(report_table(report))
    (out / STATE).unlink(missing_ok=True)
    return report


def report_table(report: dict) -> str:
    clean = report["clean"]
    lines = [
        f"SAEs on {report['images']} images; clean model: accuracy {clean['accuracy']:.3f}, "
        f"cross-entropy {clean['cross_entropy']:.3f}",
        "",
        "| layer | latents | k | FVU | dead | accuracy, spliced | cross-entropy, spliced |",
        "|---|---|---|---|---|---|---|",
    ]
    for l, r in report["layers"].items():
        lines.append(
            f"| {l} | {r['latents']} | {r['k']} | {r['fvu']:.3f} | {r['dead']:.3f} | "
            f"{r['spliced_accuracy']:.3f} | {r['spliced_cross_entropy']:.3f} |"
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
