"""The timm adapter on a module with timm's layout (timm itself is not needed)."""

import pytest
import torch
from torch import nn

from neuronpath.engine.attribution import AttributionConfig
from neuronpath.engine.tokens import TokenPolicy
from neuronpath.methods import find_paths
from neuronpath.models.timm_models import from_timm_model, load_timm


class Mlp(nn.Module):
    def __init__(self, d, n):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, n), nn.GELU(), nn.Linear(n, d)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, d, n):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = (
            nn.LayerNorm(d),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            Mlp(d, n),
        )

    def forward(self, x):
        x = x + self.attn(self.norm1(x)).mean(1, keepdim=True)  # mixes tokens
        return x + self.mlp(self.norm2(x))


class TimmLikeViT(nn.Module):
    """timm's VisionTransformer attribute layout in miniature (patch 4 on 8x8 inputs)."""

    def __init__(self, global_pool="token", d=8, n=10, classes=1000):
        super().__init__()
        self.global_pool, self.num_prefix_tokens, self.num_classes = global_pool, 1, classes
        self.pretrained_cfg = {
            "input_size": (3, 8, 8),
            "crop_pct": 0.9,
            "interpolation": "bilinear",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.5, 0.5, 0.5),
        }
        self.patch = nn.Linear(48, d)
        self.cls_token = nn.Parameter(torch.randn(1, 1, d))
        self.blocks = nn.Sequential(Block(d, n), Block(d, n))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        patches = (
            x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        )
        h = torch.cat([self.cls_token.expand(len(x), -1, -1), self.patch(patches)], dim=1)
        h = self.blocks(h)
        if self.global_pool == "map":  # attention pooling over every token, in miniature
            return self.head((h.softmax(dim=1) * h).sum(1))
        return self.head(h[:, 1:].mean(1) if self.global_pool == "avg" else h[:, 0])


def test_timm_layout_cls_model():
    torch.manual_seed(0)
    adapter = from_timm_model(TimmLikeViT().double())
    assert adapter.site_names == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert adapter.token.name == "cls" and adapter.id2label[0] == "n01440764"
    assert adapter.preprocess.shortest_edge == 8 and adapter.preprocess.crop == (8, 8)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    result = find_paths(adapter, x, torch.tensor([1, 2]), config=AttributionConfig(steps=3))
    assert result.paths["jas"].shape == (2, 2) and torch.isfinite(result.scores["jas"]).all()


def test_timm_avg_pool_uses_all_patch_tokens():
    adapter = from_timm_model(TimmLikeViT(global_pool="avg"))
    assert adapter.token.start == 1 and adapter.token.stop is None
    assert from_timm_model(TimmLikeViT(global_pool="avg"), token="3").token.name == "index:3"
    with pytest.raises(ValueError, match="cannot influence the output of TimmLikeViT"):
        from_timm_model(TimmLikeViT(global_pool="avg"), token="cls")


def test_timm_map_pool_reads_every_token():
    adapter = from_timm_model(TimmLikeViT(global_pool="map"))
    assert adapter.token == TokenPolicy.all() and "attention pooling" in adapter.readout.reason


def test_load_timm_without_timm_is_explained():
    try:
        import timm  # noqa: F401

        pytest.skip("timm is installed here")
    except ImportError:
        pass
    from neuronpath.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="pip install timm"):
        load_timm("vit_base_patch16_224")
