"""Does the mixed (neurons + heads) JAS search depend on the unit a head's value is read in?
Runs the search twice on the same images, heads read as |z| and as |z|/sqrt(d), and counts the
(block, image) choices that change kind or unit.

    python benchmarks/mixed_scale.py --images 100            # the built-in demo ViT

The rescaling is applied by patching the unit map's value, gradient and placement (not through
``UnitMap.scale``), so the script also runs on code older than that field:
``git worktree add /tmp/old 97a07c6 && PYTHONPATH=/tmp/old/src python benchmarks/mixed_scale.py``
measures the search before issue 33.
"""

from __future__ import annotations

import argparse

import torch

from neuronpath.engine import units
from neuronpath.engine.attribution import AttributionConfig, clean_pass
from neuronpath.io.images import image_batches, interleave_classes, scan_image_folder
from neuronpath.methods.jas import jas_path
from neuronpath.models.demo import demo_data_dir
from neuronpath.models.loading import load_model


def mixed_path(adapter, x, y, config, scale: float) -> torch.Tensor:
    """The mixed JAS path with every head's value read as ``scale`` x its norm."""
    saved = units.UnitMap.values, units.UnitMap.project, units.UnitMap.embed

    def values(self, z):
        return z if self.identity else scale * self._groups(z).norm(dim=-1)

    def project(self, g, z):
        return g if self.identity else (self._groups(g) * self.directions(z)).sum(-1) / scale

    def embed(self, c, z):
        return c if self.identity else (c[..., None] / scale * self.directions(z)).flatten(-2)

    units.UnitMap.values, units.UnitMap.project, units.UnitMap.embed = values, project, embed
    try:
        return jas_path(adapter, x, clean_pass(adapter, x, y, config), config)[..., 0]
    finally:
        units.UnitMap.values, units.UnitMap.project, units.UnitMap.embed = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--data", help="image folder (default: the demo's test images)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    adapter = load_model(args.model, units="neurons+heads", dtype=torch.float64)
    data = args.data or demo_data_dir() / "test"
    items = interleave_classes(scan_image_folder(data, adapter.id2label).items)[: args.images]
    batch = next(image_batches(items, adapter.preprocess, len(items)))
    x, y = batch.pixels.double(), torch.tensor([it.label for it in batch.items])
    config = AttributionConfig(steps=args.steps)
    size = next(
        adapter.units(l).size for l in range(adapter.num_layers) if not adapter.units(l).identity
    )
    one, other = (mixed_path(adapter, x, y, config, s) for s in (1.0, size**-0.5))
    blocks = one.shape[1] // 2
    one, other = one.reshape(-1, blocks, 2), other.reshape(-1, blocks, 2)
    heads_one, heads_other = one[..., 0] != -1, other[..., 0] != -1
    print(
        f"{len(items)} images x {blocks} blocks = {heads_one.numel()} choices; heads read as "
        f"|z| and |z|/sqrt({size}): {int((heads_one != heads_other).sum())} change kind, "
        f"{int((one != other).any(-1).sum())} change unit; head share "
        f"{heads_one.float().mean() * 100:.1f} % and {heads_other.float().mean() * 100:.1f} %"
    )


if __name__ == "__main__":
    main()
