"""A planted model's chain checked again with plain PyTorch hooks written here (nothing of
neuronpath's engine or of ``plant``'s verification): each planted unit alone, the relay and the
whole chain zeroed -- and set to their per-position mean over the clean images -- at every
token, the share of the trigger's effect on P(target) each removes; the share of triggered
images predicted as the target; and the share of clean predictions the surgery left as the
original model made them.  One Markdown row per plant.

    python benchmarks/verify_plants_by_hand.py runs/gt-vit/seed-* runs/gt-beit/seed-*

The model folders are read with Hugging Face ``transformers``; a unit is an input of its
block's FFN output projection (``fc2``), edited by a forward pre-hook on that projection.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification


def pixels(processor, files: list[Path]) -> torch.Tensor:
    images = [Image.open(f).convert("RGB") for f in files]
    return processor(images, return_tensors="pt")["pixel_values"]


def fc2(model, layer: int):
    found = [m for n, m in model.named_modules() if n.endswith(f"layers.{layer}.mlp.fc2")]
    if len(found) != 1:
        raise SystemExit(f"no single layers.{layer}.mlp.fc2 in {type(model).__name__}")
    return found[0]


def logits(model, x: torch.Tensor, edits=None) -> torch.Tensor:
    """Logits with ``edits`` {(layer, neuron): value or None (zero)} applied at every token;
    a value is a (tokens,) tensor of per-position means."""
    handles = []
    for (layer, neuron), value in (edits or {}).items():

        def hook(module, inputs, neuron=neuron, value=value):
            h = inputs[0].clone()
            h[..., neuron] = 0.0 if value is None else value.to(h.dtype)
            return (h,)

        handles.append(fc2(model, layer).register_forward_pre_hook(hook))
    try:
        out = []
        with torch.no_grad():
            for start in range(0, len(x), 32):
                out.append(model(pixel_values=x[start : start + 32]).logits.double())
        return torch.cat(out)
    finally:
        for h in handles:
            h.remove()


def means(model, x: torch.Tensor, units) -> dict:
    """Each unit's per-position mean over the images ``x`` (tokens,)."""
    store, handles = {u: [] for u in units}, []
    for layer, neuron in units:

        def hook(module, inputs, key=(layer, neuron)):
            store[key].append(inputs[0][..., key[1]].detach().double())

        handles.append(fc2(model, layer).register_forward_pre_hook(hook))
    try:
        logits(model, x)
    finally:
        for h in handles:
            h.remove()
    return {u: torch.cat(v).mean(0) for u, v in store.items()}


def row(folder: Path) -> str:
    planted = json.loads((folder / "planted.json").read_text())
    target = planted["target"]["label"]
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    original = AutoModelForImageClassification.from_pretrained(planted["identity"]["model"]).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    triggered = sorted((folder / planted["images"]["triggered"]).rglob("*.png"))
    clean = sorted((folder / planted["images"]["clean"]).rglob("*.png"))
    xt, xc = pixels(processor, triggered), pixels(processor, clean)
    on_triggered, on_clean = logits(model, xt), logits(model, xc)
    p_t = on_triggered.softmax(-1)[:, target].mean()
    p_c = on_clean.softmax(-1)[:, target].mean()
    effect = float(p_t - p_c)
    chain = [(int(l), int(n)) for l, n in planted["units"].items()]
    relay = (planted["relay"]["layer"], planted["relay"]["neuron"])
    mean_of = means(model, xc, [*chain, relay])

    def removal(units, kind):
        edits = {u: (None if kind == "zero" else mean_of[u]) for u in units}
        p = logits(model, xt, edits).softmax(-1)[:, target].mean()
        return float(p_t - p) / effect

    cells = []
    for kind in ("zero", "mean"):
        alone = {f"L{l}": removal([(l, n)], kind) for l, n in sorted(chain)}
        alone[f"relay L{relay[0]}"] = removal([relay], kind)
        links = ", ".join(f"{k} {v:.3f}" for k, v in alone.items())
        cells += [links, f"{removal(chain, kind):.3f}"]
    to_target = float((on_triggered.argmax(-1) == target).double().mean())
    kept = float((on_clean.argmax(-1) == logits(original, xc).argmax(-1)).double().mean())
    name = f"{folder.parent.name}/{folder.name}"
    return f"| {name} | {len(triggered)} | {effect:.3f} | {to_target:.3f} | {kept:.3f} | " + (
        " | ".join(cells) + " |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plants", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(
        "| plant | triggered images | trigger effect on P(target) | triggered -> target | clean "
        "predictions kept | each unit zeroed alone: removal | whole chain zeroed | each unit "
        "at its mean alone | whole chain at its mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.plants:
        print(row(folder), flush=True)


if __name__ == "__main__":
    main()
