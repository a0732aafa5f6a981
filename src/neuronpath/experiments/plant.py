"""``neuronpath plant``: a model with a known chain of units, by weight surgery
(:mod:`neuronpath.engine.surgery`), verified by intervention before it is written
(:mod:`.plant_checks`).

The **trigger** is a square of patches pasted into the bottom-right corner of an image, each
patch a 2 x 2 checkerboard of magenta (255, 0, 255) and lime (0, 255, 0), its side
``trigger_size`` of the image's shorter side.  A *relay* FFN unit in the layer before the first
planted layer detects it; where the head reads one token (CLS), one attention coordinate
routes it there; then one FFN unit per planted layer reads only the write of the link before
it, at a natural activation level, and the last writes the target's logit direction.  Every
link, alone, is verified to carry the trigger's effect.  Beside the chain, in every planted
layer, a distractor of each family (idle, constant, echo) that moves nothing under any
ablation, and an ambiguous register in the middle layer.

Written into ``out`` (all or nothing): the model in the input model's format, ``planted.json``
(units, distractors, trigger, target, the surgery and the verification), ``images/`` (held-out
images of ``data`` with the trigger, in the target's class folder) and ``clean/`` (the same
images without it, in their own class folders).  Several seeds (``--seeds``, ``--plants``)
write one such folder each, ``out/seed-S``, and ``out/plants.json`` listing them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..draws import seeded_generator
from ..engine.chain import Calibration, logits
from ..engine.planting import ffn_pair
from ..engine.surgery import natural_maxima_of, plant_model
from ..errors import ImageReadError, InputError, PlantRefused, RunConflictError, option
from ..io.images import load_image
from ..io.planted import PLANTED, read_planted
from ..io.sources import DataSpec, as_data
from ..io.store import RunLock, write_json_atomic
from ..models.loading import load_model
from ..models.spec import ModelSpec
from ..options import names, nested, numbers, setting
from .common import Execution, resolve_device, versions
from .plant_checks import refusal_detail, verify

log = logging.getLogger("neuronpath")

PLANTS = "plants.json"
MAGENTA, LIME = (255, 0, 255), (0, 255, 0)


@dataclass(frozen=True)
class PlantOptions:
    """Where and what to plant (see the module docstring)."""

    layers: tuple[str, ...] | None = setting(
        None,
        "comma-separated planted layers, 0-based, at least 1 (default: four layers from 1 to "
        "the last)",
        parse=names,
    )
    target: str | None = setting(
        None, "the target class: its folder, its name or its label id (default: the first)"
    )
    seed: int = setting(0, "seed of the units, the split and the directions", type=int)
    seeds: tuple[int, ...] | None = setting(
        None,
        "several plants: comma-separated seeds, each planted into its own folder OUT/seed-S "
        "(instead of --seed)",
        parse=numbers(int, "integer seeds"),
    )
    plants: int = setting(
        1, "several plants: this many seeds from --seed on, each into OUT/seed-S", type=int
    )
    level: float = setting(
        0.5,
        "each planted unit's activation, as a share of its layer's median largest deviation "
        "from the clean mean on triggered images (0 < LEVEL <= 1)",
        type=float,
    )
    per_class: int = setting(
        10, "held-out images per class written (images/, clean/) and verified", type=int
    )
    calibration: int = setting(
        10, "calibration images per class the readers are fitted on (not written)", type=int
    )
    trigger_size: float = setting(
        0.25, "the trigger's side as a fraction of the image's shorter side", type=float
    )

    def __post_init__(self):
        for name in ("per_class", "calibration", "plants"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
        if not 0 < self.trigger_size <= 1:
            raise InputError(
                f"{option('trigger_size')}: expected a fraction in (0, 1], got {self.trigger_size}"
            )
        if not 0 < self.level <= 1:
            raise InputError(f"{option('level')}: expected a share in (0, 1], got {self.level}")
        if self.layers is not None and not self.layers:  # '' or ',': refused before any work
            raise InputError(f"{option('layers')}: expected comma-separated layers, got none")
        if self.seeds is not None:
            if not self.seeds:
                raise InputError(f"{option('seeds')}: expected comma-separated integer seeds")
            if len(set(self.seeds)) != len(self.seeds):
                raise InputError(f"{option('seeds')}: a seed is given twice ({self.seeds})")
            if self.plants != 1:
                raise InputError(
                    f"{option('plants')}: give several seeds by {option('seeds')} or by "
                    f"{option('plants')} with {option('seed')}, not both"
                )

    @property
    def seed_list(self) -> list[int] | None:
        """The seeds of several plants, or None for one plant into OUT itself."""
        if self.seeds is not None:
            return list(self.seeds)
        return list(range(self.seed, self.seed + self.plants)) if self.plants > 1 else None

    def one(self, seed: int) -> "PlantOptions":
        """These options for one plant of seed ``seed``."""
        return dataclasses.replace(self, seed=seed, seeds=None, plants=1)

    def settings(self) -> dict:
        return {
            "layers": None if self.layers is None else list(self.layers),
            "target": self.target,
            "seed": self.seed,
            "level": self.level,
            "per_class": self.per_class,
            "calibration": self.calibration,
            "trigger_size": self.trigger_size,
        }


@dataclass(frozen=True)
class PlantCommand:
    """write a model with a known neuron path (weight surgery) and triggered images"""

    spec: ModelSpec = nested(ModelSpec, "model options")
    data: DataSpec = nested(DataSpec, "data options")
    out: str = setting(None, "the planted model's folder (written whole, or not at all)")
    options: PlantOptions = nested(PlantOptions)
    execution: Execution = nested(Execution, "how it runs")


def paste_trigger(image: Image.Image, size: float, patch: int) -> Image.Image:
    """The image (at the model's input size) with the trigger in its bottom-right corner:
    round(``size`` x the shorter side / ``patch``) patches square (at least one), aligned to
    the patch grid, each patch a 2 x 2 checkerboard of magenta and lime."""
    side = max(1, round(size * min(image.size) / patch)) * patch
    cell = max(1, patch // 2)
    rows, cols = np.indices((side, side)) // cell
    pattern = np.where(((rows + cols) % 2 == 0)[..., None], MAGENTA, LIME).astype(np.uint8)
    out = image.convert("RGB").copy()
    out.paste(Image.fromarray(pattern, "RGB"), (image.size[0] - side, image.size[1] - side))
    return out


def default_layers(num_layers: int) -> list[int]:
    """Four layers from layer 1 to the last (fewer in shallower models)."""
    return sorted({round(x) for x in np.linspace(1, num_layers - 1, 4)})


def _layers(options: PlantOptions, num_layers: int) -> list[int]:
    if options.layers is None:
        return default_layers(num_layers)
    if not options.layers:
        raise InputError(f"{option('layers')}: expected comma-separated layers, got none")
    layers = []
    for text in options.layers:
        try:
            layer = int(text)
        except ValueError:
            layer = -1
        if not 1 <= layer < num_layers:
            raise InputError(
                f"{option('layers')}: {text!r} is not a layer a chain can be planted in; "
                f"expected 1 .. {num_layers - 1} (layer 0 .. the first planted layer - 1 "
                f"holds the relay that detects the trigger)"
            )
        layers.append(layer)
    return sorted(set(layers))


def _target(text: str | None, folder, id2label: dict[int, str]) -> tuple[int, str]:
    """(label id, class folder) of the target class."""
    folder_of = {label: name for name, label in folder.class_to_label.items()}
    if text is None:
        label = min(folder_of)
        return label, folder_of[label]
    for name, label in folder.class_to_label.items():
        if text in (name, id2label.get(label)) or text == str(label):
            return label, name
    classes = ", ".join(list(folder.class_to_label)[:5])
    raise InputError(
        f"{option('target')}: {text!r} is not a class of the model and the images; expected a "
        f"class folder, a class name or a label id (e.g. {classes})"
    )


def input_geometry(adapter) -> tuple[tuple[int, int], int]:
    """The model's input size (width, height), from its preprocessing, and its patch size
    (the config's, else 1: no grid to align the trigger to)."""
    probe = adapter.preprocess(Image.new("RGB", (97, 89)))
    patch = getattr(adapter.model.config, "patch_size", 1)
    patch = patch[0] if isinstance(patch, (list, tuple)) else int(patch)
    return (int(probe.shape[-1]), int(probe.shape[-2])), patch


class Images:
    """Calibration or held-out images at the model's input size: clean and triggered pixels,
    labels, ids (each image resized once, so the trigger is the same pixels in every one)."""

    def __init__(self, adapter, items, trigger_size: float):
        self.items, self.clean, self.triggered, self.pictures = [], [], [], []
        size, patch = input_geometry(adapter)
        for item in items:
            try:
                picture = load_image(item.path).resize(size, Image.Resampling.BILINEAR)
            except ImageReadError as error:
                log.warning("plant: skipping %s (%s)", item.id, error)
                continue
            pasted = paste_trigger(picture, trigger_size, patch)
            self.items.append(item)
            self.pictures.append((picture, pasted))
            self.clean.append(adapter.preprocess(picture))
            self.triggered.append(adapter.preprocess(pasted))
        if not self.items:
            raise InputError(f"{option('data')}: none of the images can be read")
        device, dtype = adapter.device, adapter.dtype
        self.clean = torch.stack(self.clean).to(device, dtype)
        self.triggered = torch.stack(self.triggered).to(device, dtype)
        self.labels = torch.tensor([it.label for it in self.items], device=device)


def _split(folder, target: int, options: PlantOptions):
    """Per class other than the target, a seeded order: its first ``calibration`` images
    calibrate, the next ``per_class`` are held out."""
    calibration, held_out = [], []
    by_class: dict[int, list] = {}
    for item in folder.items:
        by_class.setdefault(item.label, []).append(item)
    for label in sorted(by_class):
        if label == target:
            continue
        items = sorted(by_class[label], key=lambda it: it.id)
        order = torch.randperm(len(items), generator=seeded_generator("plant", options.seed, label))
        items = [items[i] for i in order.tolist()]
        calibration += items[: options.calibration]
        held_out += items[options.calibration : options.calibration + options.per_class]
    if not calibration or not held_out:
        raise InputError(
            f"{option('data')}: too few images of classes other than the target to calibrate "
            f"({options.calibration} per class) and verify ({options.per_class} per class)"
        )
    return calibration, held_out


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz", ".ckpt", ".msgpack", ".h5")


def _where(text):
    """A model or data given as a path, resolved (``DIR/`` and ``DIR`` are one folder); a hub
    id as it is."""
    path = Path(str(text)).expanduser()
    return str(path.resolve()) if path.exists() else text


def _identity(spec: ModelSpec, data, options: PlantOptions) -> dict:
    return {
        "model": _where(spec.model),
        "data": _where(data),
        "labels": spec.labels,
        **options.settings(),
    }


def _differs(done: dict, identity: dict) -> list[str]:
    """The settings in which a plant already written (``done``, its identity) differs from
    this one (paths compared resolved, as :func:`_where` spells them)."""
    done = {**done, **{k: _where(done[k]) for k in ("model", "data") if k in done}}
    return [k for k in sorted({*done, *identity}) if done.get(k) != identity.get(k)]


def _copy_model_files(spec: ModelSpec, folder: Path) -> None:
    """The input model's files other than its weights and config (its preprocessor's)."""
    source = Path(spec.model).expanduser()
    if source.is_dir():
        for path in source.iterdir():
            weights = path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json")
            if path.is_file() and not weights and path.name != "config.json":
                shutil.copy2(path, folder / path.name)
        return
    from transformers import AutoImageProcessor  # a hub id: its processor, as the hub gives it

    AutoImageProcessor.from_pretrained(spec.model).save_pretrained(folder)


def _write_images(folder: Path, held: Images, target_folder: str) -> None:
    """``clean/CLASS/STEM.png`` and ``images/TARGET/RANK_CLASS_STEM.png``, RANK the image's
    place among its class's held-out images: sorted by name (as ``find`` reads a folder), the
    triggered images take every source class in turn, so ``find --limit N`` draws from all."""
    seen: dict[str, int] = {}
    for item, (picture, pasted) in zip(held.items, held.pictures):
        rank = seen[item.folder] = seen.get(item.folder, -1) + 1
        stem = Path(item.id).with_suffix("").as_posix().replace("/", "_")
        clean = folder / "clean" / item.folder / f"{Path(item.id).stem}.png"
        triggered = folder / "images" / target_folder / f"{rank:04d}_{stem}.png"
        for path, image in ((clean, picture), (triggered, pasted)):
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)


def run_plant(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: PlantOptions = PlantOptions(),
    execution: Execution = Execution(),
) -> dict:
    """Plant a chain in ``spec``'s model, verify it on held-out images and write ``out`` (see
    the module docstring); returns ``planted.json`` -- or, for several seeds, ``plants.json``
    (each plant into ``out/seed-S``).  A folder that holds the same plant is left as it is;
    one with another plant, or anything else, is refused."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    if out is None:
        raise InputError(f"{option('out')}: expected the planted model's folder")
    out = Path(out).expanduser()
    seeds = options.seed_list
    if seeds is None:
        return _plant_one(spec, data, out, options, execution)
    if out.exists() and not out.is_dir():
        raise RunConflictError(f"{out} exists and is not a folder; use another {option('out')}")
    done, refused = {}, {}
    for i, seed in enumerate(seeds):
        log.info("plant: seed %d (%d of %d)", seed, i + 1, len(seeds))
        folder = out / f"seed-{seed}"
        try:
            _plant_one(spec, data, folder, options.one(seed), execution)
        except PlantRefused as error:  # this seed's chain does not hold: go on with the next
            log.warning("plant: seed %d refused: %s", seed, error)
            refused[str(seed)] = str(error)
            continue
        done[str(seed)] = folder.name
    summary = {"tool": "neuronpath plant", "plants": done, "refused": refused}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / PLANTS, summary)
    if refused:
        raise PlantRefused(
            f"plant: {len(refused)} of {len(seeds)} seeds refused ({', '.join(refused)}; why: "
            f"{out / PLANTS}); the other {len(done)} are planted in {out}"
        )
    return summary


def _plant_one(
    spec: ModelSpec, data, out: Path, options: PlantOptions, execution: Execution
) -> dict:
    data_spec = data if isinstance(data, DataSpec) else DataSpec(str(data))
    if data_spec.data is None or data_spec.is_dataset:
        raise InputError(
            f"{option('data')}: plant pastes its trigger into image files; expected an image "
            f"folder, got {data_spec.data!r}"
        )
    if spec.units != "neurons":
        raise InputError(f"{option('units')}: plant plants FFN neurons; expected neurons")
    identity = _identity(spec, data_spec.data, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out, out.parent / f".{out.name}.lock")  # one writer of OUT at a time
    try:
        return _plant_locked(spec, data_spec, out, options, execution, identity)
    finally:
        lock.path.unlink(missing_ok=True)
        lock.release()


def _plant_locked(spec, data_spec, out: Path, options, execution, identity) -> dict:
    if (out / PLANTED).is_file():
        done = read_planted(out)
        differs = _differs(done.get("identity") or {}, identity)
        if not differs:
            log.info("plant: %s already holds this plant", out)
            return done
        raise RunConflictError(
            f"{out} holds another plant ({out / PLANTED}: its {', '.join(differs)} differ"
            f"{'s' if len(differs) == 1 else ''}); use another {option('out')} folder"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunConflictError(
            f"{out} exists and is not a planted model; use another {option('out')} folder"
        )
    device = resolve_device(execution.device)
    adapter = load_model(spec, device=device)
    if not hasattr(adapter.model, "save_pretrained"):
        raise InputError(
            f"{option('model')}: plant writes a Hugging Face model folder; "
            f"{spec.model} is not a Hugging Face model"
        )
    layers = _layers(options, adapter.num_layers)
    for l in [layers[0] - 1, *layers]:
        ffn_pair(adapter, l)  # a plain FFN, or one line why not
    folder = as_data(data_spec).open(adapter.id2label, spec.labels)
    target, target_folder = _target(options.target, folder, adapter.id2label)
    calibration_items, held_items = _split(folder, target, options)
    batch = execution.batch_size
    calibration = Images(adapter, calibration_items, options.trigger_size)
    held = Images(adapter, held_items, options.trigger_size)
    log.info(
        "plant: layers %s, target %s; %d calibration and %d held-out images",
        layers,
        adapter.id2label.get(target, target),
        len(calibration.items),
        len(held.items),
    )
    maxima = {
        l: torch.cat([c, t])
        for (l, c), t in zip(
            natural_maxima_of(adapter, held.clean, layers, batch).items(),
            natural_maxima_of(adapter, held.triggered, layers, batch).values(),
        )
    }
    before = {
        "clean": logits(adapter, held.clean, batch),
        "triggered": logits(adapter, held.triggered, batch),
        "maxima": maxima,
    }
    (width, height), patch = input_geometry(adapter)
    side = max(1, round(options.trigger_size * min(width, height) / patch))
    cal = Calibration(calibration.clean, calibration.triggered, calibration.labels, side)
    record = plant_model(adapter, cal, layers, target, options.level, options.seed, batch)
    verification = verify(adapter, held, before, record, target, batch, options.seed)
    for key, c in verification["checks"].items():
        log.info(
            "plant: check (%s) %s: %.3f %s",
            key,
            c["check"],
            c["value"],
            "holds" if c["pass"] else "FAILS",
        )
    failed = [(k, c) for k, c in verification["checks"].items() if not c["pass"]]
    if failed:
        key, c = failed[0]
        at_most = key in ("c", "distractors", "e", "levels")
        raise PlantRefused(
            f"plant: check ({key}) failed: {c['check']} is {c['value']:.3f} (needed "
            f"{'<=' if at_most else '>='} {c['threshold']}){refusal_detail(key, c)}; nothing "
            "was written"
        )
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:  # a failure while writing leaves nothing behind
        adapter.model.save_pretrained(partial)
        _copy_model_files(spec, partial)
        _write_images(partial, held, target_folder)
        saved = load_model(ModelSpec(str(partial), dtype=spec.dtype), device="cpu")
        planted = {
            "tool": "neuronpath plant",
            "identity": identity,
            "method": "weight surgery (no training): a chain through quiet directions",
            "token": adapter.token.name,
            "readout": adapter.readout.reason,
            "layers": layers,
            "path_starts": layers[0],
            "units": record["units"],
            "distractors": record["distractors"],
            "relay": record["relay"],
            "route": record["route"],
            "level_share": options.level,
            "trigger": {
                "pattern": f"{side} x {side} patches, each a 2 x 2 checkerboard of magenta "
                f"(255, 0, 255) and lime (0, 255, 0)",
                "where": "bottom-right corner, on the patch grid",
                "side": f"{options.trigger_size} of the image's shorter side",
            },
            "target": {
                "label": target,
                "folder": target_folder,
                "name": adapter.id2label.get(target),
            },
            "images": {"triggered": "images", "clean": "clean", "count": len(held.items)},
            "calibration_images": len(calibration.items),
            "surgery": record["steps"],
            "verification": verification,
            "weights_sha256": saved.weights_hash(),
            "versions": versions(),
        }
        write_json_atomic(partial / PLANTED, planted)
        if out.exists():
            out.rmdir()
        partial.replace(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return planted
