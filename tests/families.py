"""Tiny random models of every supported family, built from configs in the tests (no network).

Each builder returns a float64 model in eval mode whose labels are the cat/dog/fish folders of
``conftest.make_image_folder``; ``save_family`` writes it as a local Hugging Face folder (with a
preprocessor config, and for the zero-shot families a tokenizer and a class file) for the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T

from conftest import TINY_LABELS, TINY_PREPROCESSOR

LABELS = dict(id2label=TINY_LABELS, label2id={v: k for k, v in TINY_LABELS.items()})
VIT = dict(
    image_size=8,
    patch_size=4,
    num_channels=3,
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=12,
    initializer_range=0.3,
)
SWIN_IMAGE = 16
HIERA_IMAGE = 32
WORDS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "a", "photo", "of", "cat", "dog", "fish", "."]


def _vision(**extra):
    return {k: v for k, v in {**VIT, **extra}.items() if v is not None}


def _text(family: str) -> dict:
    text = dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=12,
        vocab_size=len(WORDS),
        max_position_embeddings=16,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        initializer_range=0.3,
    )
    return {**text, "projection_dim": 8} if family == "clip" else text


def build(family: str, seed: int = 0):
    """The family's tiny model (float64, eval mode)."""
    torch.manual_seed(seed)
    if family == "vit":
        model = T.ViTForImageClassification(T.ViTConfig(**VIT, **LABELS))
    elif family in ("beit", "data2vec-vision"):
        cfg = T.BeitConfig if family == "beit" else T.Data2VecVisionConfig
        cls = (
            T.BeitForImageClassification
            if family == "beit"
            else T.Data2VecVisionForImageClassification
        )
        model = cls(cfg(**VIT, use_mean_pooling=True, layer_scale_init_value=1.0, **LABELS))
    elif family == "clip-classifier":
        model = T.CLIPForImageClassification(
            T.CLIPConfig(vision_config=_vision(), text_config=_text("clip"), **LABELS)
        )
    elif family == "siglip-classifier":
        model = T.SiglipForImageClassification(
            T.SiglipConfig(vision_config=_vision(), text_config=_text("siglip"), **LABELS)
        )
    elif family in ("dinov2", "dinov2-registers", "dinov2-swiglu"):
        vision = _vision(intermediate_size=None, mlp_ratio=3, layerscale_value=1.0)
        if family == "dinov2":
            model = T.Dinov2ForImageClassification(T.Dinov2Config(**vision, **LABELS))
        elif family == "dinov2-swiglu":  # a gated FFN: down(silu(gate(x)) * up(x))
            model = T.Dinov2ForImageClassification(
                T.Dinov2Config(**vision, use_swiglu_ffn=True, **LABELS)
            )
        else:
            model = T.Dinov2WithRegistersForImageClassification(
                T.Dinov2WithRegistersConfig(**vision, num_register_tokens=2, **LABELS)
            )
    elif family == "deit-teacher":
        model = T.DeiTForImageClassificationWithTeacher(T.DeiTConfig(**VIT, **LABELS))
        with torch.no_grad():  # random CLS and distillation tokens (they start as zeros)
            model.deit.embeddings.cls_token.normal_()
            model.deit.embeddings.distillation_token.normal_()
    elif family == "swin":
        model = T.SwinForImageClassification(
            T.SwinConfig(
                image_size=SWIN_IMAGE,
                patch_size=2,
                num_channels=3,
                embed_dim=8,
                depths=[2, 2],
                num_heads=[2, 2],
                window_size=2,
                mlp_ratio=2.0,
                initializer_range=0.3,
                **LABELS,
            )
        )
    elif family == "pvt":  # hierarchical; a CLS token in the last stage only
        model = T.PvtForImageClassification(
            T.PvtConfig(
                image_size=16,
                num_channels=3,
                num_encoder_blocks=2,
                depths=[1, 2],
                sequence_reduction_ratios=[2, 1],
                hidden_sizes=[8, 16],
                patch_sizes=[4, 2],
                strides=[4, 2],
                num_attention_heads=[1, 2],
                mlp_ratios=[2, 2],
                initializer_range=0.3,
                num_labels=len(TINY_LABELS),
                **LABELS,
            )
        )
    elif family == "cvt":  # convolutional embeddings per stage; a CLS token in the last stage
        two = dict(
            patch_sizes=[3, 3],
            patch_stride=[2, 2],
            patch_padding=[1, 1],
            embed_dim=[8, 16],
            num_heads=[1, 2],
            depth=[1, 2],
            mlp_ratio=[2.0, 2.0],
            attention_drop_rate=[0.0, 0.0],
            drop_rate=[0.0, 0.0],
            drop_path_rate=[0.0, 0.0],
            qkv_bias=[True, True],
            cls_token=[False, True],
            qkv_projection_method=["dw_bn", "dw_bn"],
            kernel_qkv=[3, 3],
            padding_kv=[1, 1],
            stride_kv=[2, 2],
            padding_q=[1, 1],
            stride_q=[1, 1],
        )
        model = T.CvtForImageClassification(
            T.CvtConfig(num_channels=3, initializer_range=0.3, **two, **LABELS)
        )
        with torch.no_grad():  # batch norms with non-trivial statistics
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.normal_(0, 0.1)
                    module.running_var.uniform_(0.5, 1.5)
    elif family == "hiera":  # tokens "unrolled": pooling windows strided apart
        model = T.HieraForImageClassification(
            T.HieraConfig(
                embed_dim=8,
                image_size=[HIERA_IMAGE, HIERA_IMAGE],
                patch_size=[3, 3],
                patch_stride=[2, 2],
                patch_padding=[1, 1],
                mlp_ratio=2.0,
                depths=[1, 1, 2],
                num_heads=[1, 1, 2],
                embed_dim_multiplier=2.0,
                num_query_pool=2,
                query_stride=[2, 2],
                masked_unit_size=[4, 4],
                masked_unit_attention=[True, False, False],
                initializer_range=0.3,
                **LABELS,
            )
        )
    elif family in ("clip-zero-shot", "siglip-zero-shot"):
        kind = family.split("-")[0]
        config = (T.CLIPConfig if kind == "clip" else T.SiglipConfig)(
            vision_config=_vision(),
            text_config=_text(kind),
            **({"projection_dim": 8} if kind == "clip" else {}),
        )
        model = (T.CLIPModel if kind == "clip" else T.SiglipModel)(config)
    else:
        raise ValueError(family)
    return model.double().eval()


FAMILIES = (
    "vit",
    "beit",
    "data2vec-vision",
    "clip-classifier",
    "siglip-classifier",
    "dinov2",
    "dinov2-registers",
    "dinov2-swiglu",
    "deit-teacher",
    "swin",
    "pvt",
    "cvt",
    "hiera",
    "clip-zero-shot",
    "siglip-zero-shot",
)
ZERO_SHOT = ("clip-zero-shot", "siglip-zero-shot")

# what each family's head reads: the positions the token policy must hold at the last block
EXPECTED_READOUT = {
    "vit": "cls",
    "beit": "patches:1",
    "data2vec-vision": "patches:1",
    "clip-classifier": "patches:1",
    "siglip-classifier": "all",
    "dinov2": "cls+patches:1",
    "dinov2-registers": "cls+patches:3",
    "dinov2-swiglu": "cls+patches:1",
    "deit-teacher": "cls+distillation",
    "swin": "all",
    "pvt": "cls",
    "cvt": "cls",
    "hiera": "all",
    "clip-zero-shot": "cls",
    "siglip-zero-shot": "all",
}


def image_size(family: str) -> int:
    return {"swin": SWIN_IMAGE, "pvt": 16, "cvt": 16, "hiera": HIERA_IMAGE}.get(
        family, VIT["image_size"]
    )


def save_tokenizer(folder: Path) -> None:
    """A word-level tokenizer over the prompts' words that appends [EOS] (id 3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A [EOS]", special_tokens=[("[EOS]", 3)]
    )
    T.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    ).save_pretrained(folder)


def save_family(family: str, folder: Path, seed: int = 0) -> Path:
    """Save the family's model (float32) as a local folder the CLI can load."""
    model = build(family, seed).float()
    model.save_pretrained(folder)
    size = image_size(family)
    (folder / "preprocessor_config.json").write_text(
        json.dumps(
            {
                **TINY_PREPROCESSOR,
                "size": {"height": size, "width": size},
                "image_processor_type": "ViTImageProcessor",
            }
        )
    )
    if family in ZERO_SHOT:
        save_tokenizer(folder)
        (folder / "classes.tsv").write_text("".join(f"{n}\t{n}\n" for n in TINY_LABELS.values()))
    return folder
