"""The paper's own checkpoints, converted into Hugging Face ViT modules.

* Google's ViT ``.npz`` files (``ViT-B_16-224.npz``, ``ViT-B_32.npz``, ``ViT-L_32.npz``,
  ImageNet-21k -> 1k) become a ``ViTForImageClassification`` (CLS-token classifier).  When the
  checkpoint's position grid differs from the requested image size (B/32 and L/32 are 384-px
  fine-tunes that the official code runs at 224, docs/official-code.md#preprocessing), the grid is
  resized bilinearly with corner alignment, which equals the official ``scipy.ndimage.zoom(...,
  order=1)``.
* MAE's ``mae_finetuned_vit_base.pth`` (timm layout) becomes a :class:`GlobalPoolViT`: a
  ``ViTModel`` without final norm, mean of the patch tokens, ``fc_norm``, head.  The official code
  applies ``fc_norm`` twice (docs/official-code.md#mae); ``fc_norm_twice=True`` reproduces that.

Weights are written in the transformers 4.x checkpoint key layout (the hub's) and loaded
with ``from_pretrained``, which transformers 5.x converts to its own names, so one converter
serves both major versions.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ModelLoadError, option
from ..io.labels import imagenet_synsets
from ..io.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .spec import ModelSpec


def resize_position_grid(pos: torch.Tensor, prefix: int, new_grid: int) -> torch.Tensor:
    """(1, prefix + g*g, D) -> (1, prefix + new_grid**2, D), bilinear with aligned corners."""
    tokens, grid = pos[:, :prefix], pos[:, prefix:]
    old = int(round(grid.shape[1] ** 0.5))
    if old * old != grid.shape[1]:
        raise CheckpointError(f"position embedding: {grid.shape[1]} grid tokens is not a square")
    if old == new_grid:
        return pos
    grid = grid.reshape(1, old, old, -1).permute(0, 3, 1, 2).double()
    grid = nn.functional.interpolate(
        grid, size=(new_grid, new_grid), mode="bilinear", align_corners=True
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid * new_grid, -1).to(pos.dtype)
    return torch.cat([tokens, grid], dim=1)


def _labels(num: int) -> dict[int, str]:
    names = imagenet_synsets() if num == 1000 else [str(i) for i in range(num)]
    return dict(enumerate(names))


def _vit_config(hidden, layers, heads, ffn, patch, image_size, num_labels):
    from transformers import ViTConfig

    labels = _labels(num_labels)
    return ViTConfig(
        image_size=image_size,
        patch_size=patch,
        num_channels=3,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def _from_state_dict(cls, config, state: dict[str, torch.Tensor]):
    """Instantiate a transformers class from a 4.x-layout state dict via from_pretrained."""
    from safetensors.torch import save_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as folder:
        config.save_pretrained(folder)
        save_file(
            {k: v.contiguous() for k, v in state.items()}, str(Path(folder) / "model.safetensors")
        )
        model = cls.from_pretrained(folder)
    return model.float().eval()


def _check_image_size(image_size: int, patch: int) -> int:
    if image_size % patch:
        raise CheckpointError(
            f"image size {image_size} is not a multiple of the patch size {patch}"
        )
    return image_size // patch


def load_google_npz(path: str | Path, image_size: int = 224):
    """Google ViT ``.npz`` -> ``ViTForImageClassification`` at ``image_size``."""
    from transformers import ViTForImageClassification

    try:
        w = dict(np.load(path))
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable .npz file ({error})") from error
    if "embedding/kernel" not in w or "head/kernel" not in w:
        raise CheckpointError(
            f"{path}: not a Google ViT checkpoint (no embedding/kernel or "
            f"head/kernel); expected the layout of ViT-B_16-224.npz"
        )
    if "pre_logits/kernel" in w:
        raise CheckpointError(
            f"{path}: has a pre-logits layer (an ImageNet-21k pre-training "
            f"checkpoint); use the ImageNet-1k fine-tuned files"
        )
    t = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in w.items()}
    patch, _, _, hidden = t["embedding/kernel"].shape
    blocks = sorted(
        {int(m.group(1)) for k in t if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    )
    first = f"Transformer/encoderblock_{blocks[0]}"
    heads = t[f"{first}/MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    ffn = t[f"{first}/MlpBlock_3/Dense_0/kernel"].shape[1]
    num_labels = t["head/kernel"].shape[1]
    grid = _check_image_size(image_size, patch)
    s = {
        "vit.embeddings.cls_token": t["cls"],
        "vit.embeddings.position_embeddings": resize_position_grid(
            t["Transformer/posembed_input/pos_embedding"], 1, grid
        ),
        "vit.embeddings.patch_embeddings.projection.weight": t["embedding/kernel"].permute(
            3, 2, 0, 1
        ),
        "vit.embeddings.patch_embeddings.projection.bias": t["embedding/bias"],
        "vit.layernorm.weight": t["Transformer/encoder_norm/scale"],
        "vit.layernorm.bias": t["Transformer/encoder_norm/bias"],
        "classifier.weight": t["head/kernel"].T,
        "classifier.bias": t["head/bias"],
    }
    for i in blocks:
        src, dst = f"Transformer/encoderblock_{i}", f"vit.encoder.layer.{i}"
        att = f"{src}/MultiHeadDotProductAttention_1"
        for name in ("query", "key", "value"):
            s[f"{dst}.attention.attention.{name}.weight"] = (
                t[f"{att}/{name}/kernel"].reshape(hidden, hidden).T
            )
            s[f"{dst}.attention.attention.{name}.bias"] = t[f"{att}/{name}/bias"].reshape(hidden)
        s[f"{dst}.attention.output.dense.weight"] = t[f"{att}/out/kernel"].reshape(hidden, hidden).T
        s[f"{dst}.attention.output.dense.bias"] = t[f"{att}/out/bias"]
        s[f"{dst}.intermediate.dense.weight"] = t[f"{src}/MlpBlock_3/Dense_0/kernel"].T
        s[f"{dst}.intermediate.dense.bias"] = t[f"{src}/MlpBlock_3/Dense_0/bias"]
        s[f"{dst}.output.dense.weight"] = t[f"{src}/MlpBlock_3/Dense_1/kernel"].T
        s[f"{dst}.output.dense.bias"] = t[f"{src}/MlpBlock_3/Dense_1/bias"]
        for ln, hf in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
            s[f"{dst}.{hf}.weight"] = t[f"{src}/{ln}/scale"]
            s[f"{dst}.{hf}.bias"] = t[f"{src}/{ln}/bias"]
    config = _vit_config(hidden, len(blocks), heads, ffn, patch, image_size, num_labels)
    return _from_state_dict(ViTForImageClassification, config, s)


class GlobalPoolViT(nn.Module):
    """MAE fine-tuned classifier: ViT encoder (no final norm) -> mean of the patch tokens ->
    ``fc_norm`` (-> ``fc_norm`` again if ``fc_norm_twice``, the official quirk) -> head."""

    def __init__(self, vit: nn.Module, num_labels: int, fc_norm_twice: bool = False):
        super().__init__()
        self.vit = vit
        self.vit.layernorm = nn.Identity()
        self.config = vit.config
        self.fc_norm = nn.LayerNorm(vit.config.hidden_size, eps=1e-6)
        self.head = nn.Linear(vit.config.hidden_size, num_labels)
        self.fc_norm_twice = fc_norm_twice

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vit(pixel_values=pixel_values).last_hidden_state
        pooled = self.fc_norm(hidden[:, 1:].mean(dim=1))
        if self.fc_norm_twice:
            pooled = self.fc_norm(pooled)
        return self.head(pooled)


def load_mae_pth(
    path: str | Path,
    image_size: int = 224,
    fc_norm_twice: bool = False,
    num_heads: int | None = None,
) -> GlobalPoolViT:
    """MAE ``mae_finetuned_vit_base.pth`` (timm layout, global pool) -> :class:`GlobalPoolViT`.

    The head count is not stored in timm weights: it defaults to width / 64 (MAE's B and L)."""
    from transformers import ViTModel

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error})") from error
    t = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(t, dict) or "patch_embed.proj.weight" not in t or "fc_norm.weight" not in t:
        raise CheckpointError(
            f"{path}: not an MAE fine-tuned checkpoint (expected timm keys "
            f"patch_embed.proj.weight and fc_norm.weight, under 'model')"
        )
    t = {k: v.float() for k, v in t.items()}
    hidden, _, patch, _ = t["patch_embed.proj.weight"].shape
    blocks = sorted({int(m.group(1)) for k in t if (m := re.match(r"blocks\.(\d+)\.", k))})
    ffn = t["blocks.0.mlp.fc1.weight"].shape[0]
    heads = num_heads or hidden // 64
    if heads < 1 or hidden % heads:
        raise CheckpointError(
            f"{path}: width {hidden} is not divisible into {heads} heads; pass num_heads"
        )
    num_labels = t["head.weight"].shape[0]
    grid = _check_image_size(image_size, patch)
    s = {
        "embeddings.cls_token": t["cls_token"],
        "embeddings.position_embeddings": resize_position_grid(t["pos_embed"], 1, grid),
        "embeddings.patch_embeddings.projection.weight": t["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": t["patch_embed.proj.bias"],
        "layernorm.weight": torch.ones(hidden),
        "layernorm.bias": torch.zeros(hidden),
    }
    for i in blocks:
        src, dst = f"blocks.{i}", f"encoder.layer.{i}"
        for part, name in zip(t[f"{src}.attn.qkv.weight"].chunk(3), ("query", "key", "value")):
            s[f"{dst}.attention.attention.{name}.weight"] = part
        for part, name in zip(t[f"{src}.attn.qkv.bias"].chunk(3), ("query", "key", "value")):
            s[f"{dst}.attention.attention.{name}.bias"] = part
        pairs = (
            ("attn.proj", "attention.output.dense"),
            ("mlp.fc1", "intermediate.dense"),
            ("mlp.fc2", "output.dense"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
        )
        for a, b in pairs:
            s[f"{dst}.{b}.weight"] = t[f"{src}.{a}.weight"]
            s[f"{dst}.{b}.bias"] = t[f"{src}.{a}.bias"]
    config = _vit_config(hidden, len(blocks), heads, ffn, patch, image_size, num_labels)
    model = GlobalPoolViT(_from_state_dict(ViTModel, config, s), num_labels, fc_norm_twice)
    with torch.no_grad():
        model.fc_norm.weight.copy_(t["fc_norm.weight"])
        model.fc_norm.bias.copy_(t["fc_norm.bias"])
        model.head.weight.copy_(t["head.weight"])
        model.head.bias.copy_(t["head.bias"])
    return model.eval()


def load_checkpoint(path: Path, spec: ModelSpec):
    """A paper checkpoint file -> (model, its correct preprocessing), run at the spec's
    ``image_size`` (default 224, as the official code) and with its ``fc_norm_twice``."""
    from PIL import Image

    image_size = spec.image_size or 224
    try:
        if path.suffix == ".npz":  # Google ViT: inputs in [-1, 1]
            prep = Preprocess(
                "model",
                (image_size, image_size),
                None,
                None,
                int(Image.Resampling.BILINEAR),
                1 / 255,
                (0.5,) * 3,
                (0.5,) * 3,
            )
            return load_google_npz(path, image_size), prep
        if path.suffix in (".pth", ".pt"):  # MAE: resize 256, centre crop 224, ImageNet stats
            prep = Preprocess(
                "model",
                None,
                round(image_size / 0.875),
                (image_size, image_size),
                int(Image.Resampling.BICUBIC),
                1 / 255,
                IMAGENET_MEAN,
                IMAGENET_STD,
            )
            return load_mae_pth(path, image_size, spec.fc_norm_twice), prep
    except CheckpointError as error:
        raise ModelLoadError(f"{option('model')}: {error}") from error
    raise ModelLoadError(
        f"{option('model')}: {path} is a file but not a .npz (Google ViT) or "
        f".pth (MAE) checkpoint; pass a Hugging Face model folder, hub id or "
        f"checkpoint"
    )
