"""Zero-shot classifiers from contrastive image-text models (CLIP, SigLIP).

The text tower embeds one prompt per class name once (``prompt.format(name)``, L2-normalised);
the classifier is then the image tower alone: its pooled, projected, normalised embedding
against those fixed text embeddings, scaled by the model's ``logit_scale`` (plus SigLIP's
``logit_bias``) -- exactly the model's own ``logits_per_image`` for that label set.  Paths are
found in the image tower's FFN neurons.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from ..engine.direct import EmbeddingHead
from ..engine.tokens import TokenPolicy
from ..errors import InputError, ModelLoadError, option
from ..io.labels import read_class_names

DEFAULT_PROMPT = "a photo of a {}."
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
)
CONTRASTIVE = {"clip": "CLIP", "siglip": "SigLIP"}


class ZeroShotClassifier(nn.Module):
    """Image tower + fixed class text embeddings -> logits over the classes."""

    def __init__(
        self,
        vision_model: nn.Module,
        projection: nn.Module | None,
        text_embeddings: torch.Tensor,
        logit_scale: torch.Tensor,
        logit_bias: torch.Tensor | None,
        config,
    ):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = projection
        self.register_buffer("text_embeddings", text_embeddings.detach().clone())
        self.register_buffer("logit_scale", logit_scale.detach().clone())
        self.register_buffer(
            "logit_bias", None if logit_bias is None else logit_bias.detach().clone()
        )
        self.config = config

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        image = self.visual_projection(pooled) if self.visual_projection is not None else pooled
        return self.logits_of(image)

    def logits_of(self, image: torch.Tensor) -> torch.Tensor:
        """Logits of (unnormalised) image embeddings."""
        image = image / image.norm(p=2, dim=-1, keepdim=True)
        logits = image @ self.text_embeddings.to(image.dtype).T * self.logit_scale.exp()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def embedding_of_residual(
        self, residual: torch.Tensor, frozen_at: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The (unnormalised) image embedding as a function of the residual stream after the
        last block, (rows, tokens, d): CLIP's final norm of the CLS token and its projection,
        SigLIP's final norm and attention-pooling head.

        With ``frozen_at`` (a residual stream of the same shape, normally the image's own),
        every nonlinearity is frozen at that point: each LayerNorm's scale 1/sigma, the pooling
        head's attention weights and its MLP's activation, taken as the gate act(u)/u.  The map
        is then affine in ``residual`` -- e(R) = A R + b -- and equals the true embedding at
        ``residual == frozen_at``, so the direct effects of the stream's components sum to
        <e, t> - <b, t> (:mod:`neuronpath.engine.direct`)."""
        vision = self.vision_model
        at = None if frozen_at is None else frozen_at.detach()
        if getattr(vision, "head", None) is not None:  # SigLIP
            normed = _norm(vision.post_layernorm, residual, at)
            pooled = _pooling_head(
                vision.head, normed, None if at is None else _norm(vision.post_layernorm, at, at)
            )
        else:
            pooled = _norm(vision.post_layernorm, residual[:, 0], None if at is None else at[:, 0])
        return self.visual_projection(pooled) if self.visual_projection is not None else pooled

    def embedding_head(self, names: list[str]) -> EmbeddingHead:
        """What the direct effects of the image tower's units on its embedding need."""
        return EmbeddingHead(
            self.vision_model.encoder, self.embedding_of_residual, self.text_embeddings, names
        )


def _norm(norm: nn.LayerNorm, x: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """``norm(x)``; with ``at``, its scale 1/sigma taken from ``at`` (no gradient through it),
    so that it is affine in ``x``: (x - mean(x)) / sigma(at) * weight + bias."""
    if at is None:
        return norm(x)
    sigma = (at.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (x - x.mean(-1, keepdim=True)) / sigma * norm.weight + norm.bias


def _pooling_head(head: nn.Module, x: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
    """SigLIP's attention-pooling head on normed tokens ``x`` (rows, tokens, d); with ``at``
    (normed tokens too) its attention weights, its LayerNorm's scale and its MLP's activation
    (as the gate act(u)/u) frozen at ``at``: affine in ``x``, exact at ``x == at``."""
    if at is None:
        return head(x)
    attention = head.attention
    d, heads = attention.embed_dim, attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.split(d)
    b_q, b_k, b_v = attention.in_proj_bias.split(d)
    probe = head.probe.expand(x.shape[0], -1, -1)

    def split(z):  # (rows, tokens, d) -> (rows, heads, tokens, d / heads)
        return z.unflatten(-1, (heads, d // heads)).transpose(1, 2)

    with torch.no_grad():
        query = split(probe @ w_q.T + b_q)
        weights = (query @ split(at @ w_k.T + b_k).transpose(-1, -2) / (d // heads) ** 0.5).softmax(
            -1
        )
    pooled = (weights @ split(x @ w_v.T + b_v)).transpose(1, 2).flatten(-2)
    pooled = attention.out_proj(pooled)
    with torch.no_grad():
        pooled_at = attention.out_proj(
            (weights @ split(at @ w_v.T + b_v)).transpose(1, 2).flatten(-2)
        )
        hidden_at = head.mlp.fc1(head.layernorm(pooled_at))
        gate = torch.where(
            hidden_at != 0, head.mlp.activation_fn(hidden_at) / hidden_at, 0.5
        )  # act(u) = gate * u at u = hidden_at, whatever the activation
    hidden = head.mlp.fc1(_norm(head.layernorm, pooled, pooled_at))
    return (pooled + head.mlp.fc2(gate * hidden))[:, 0]


def contrastive_family(config) -> str | None:
    """'clip' or 'siglip' for a contrastive image-text model's config, else None."""
    kind = getattr(config, "model_type", "")
    return kind if kind in CONTRASTIVE and hasattr(config, "text_config") else None


def _features(output) -> torch.Tensor:
    """transformers 4.x returns the embedding; 5.x an output whose pooler_output it is."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def build_zero_shot(
    folder: str | Path, classes: str | Path, prompt: str = DEFAULT_PROMPT, local_only: bool = True
):
    """(classifier, id2label, details) for the CLIP or SigLIP model in ``folder`` and the class
    file ``classes`` (lines ``label<TAB>class name``; labels are the image folder names)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import cached_file
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    names = read_class_names(classes, "classes")
    if not names:
        raise InputError(
            f"{option('classes')}: {classes} lists no classes; expected lines "
            f"'label<TAB>class name'"
        )
    if "{}" not in prompt:
        raise InputError(
            f"{option('prompt')}: expected a template with {{}} for the class name, got {prompt!r}"
        )
    model = AutoModel.from_pretrained(str(folder), local_files_only=local_only).eval()
    family = contrastive_family(model.config)
    if family is None:
        raise ModelLoadError(
            f"{option('model')}: {folder} is a {type(model).__name__}, not a CLIP or SigLIP "
            f"model; zero-shot classification ({option('classes', 'FILE')}) needs "
            f"one"
        )
    if not any(
        cached_file(
            str(folder),
            name,
            local_files_only=local_only,
            _raise_exceptions_for_missing_entries=False,
        )
        for name in TOKENIZER_FILES
    ):
        raise ModelLoadError(
            f"{option('model')}: {folder} has no tokenizer for the class prompts (none of "
            f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer with it"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=local_only)
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{option('model')}: {folder} has no usable tokenizer for the class prompts ({error})"
        ) from error
    unknown = [
        name
        for name in names.values()
        if set(tokenizer(name, add_special_tokens=False)["input_ids"]) <= {tokenizer.unk_token_id}
    ]
    if unknown:
        raise InputError(
            f"{option('classes')}: the tokenizer knows no word of the class names "
            f"{unknown[:3]}; expected names in the model's language"
        )
    text = _embed(model, tokenizer, family, [prompt.format(name) for name in names.values()])
    vision = model.vision_model
    if family == "siglip" and getattr(vision, "head", None) is None:
        raise ModelLoadError(
            f"{option('model')}: {folder}'s SigLIP image tower has no pooling head "
            f"(vision_use_head is off), so it has no image embedding"
        )
    classifier = ZeroShotClassifier(
        vision,
        getattr(model, "visual_projection", None),
        text.to(torch.float32),
        model.logit_scale,
        getattr(model, "logit_bias", None),
        model.config.vision_config,
    )
    digest = hashlib.sha256(text.to(torch.float32).numpy().tobytes()).hexdigest()
    details = {
        "zero_shot": {
            "family": CONTRASTIVE[family],
            "classes_file": str(classes),
            "prompt": prompt,
            "class_names": list(names.values()),
            "text_embeddings_sha256": digest,
        }
    }
    return classifier, dict(enumerate(names)), details


def _embed(model, tokenizer, family: str, texts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings (texts, d) in float64 (SigLIP's prompts padded to its
    maximum length, as it was trained)."""
    padding = (
        {
            "padding": "max_length",
            "truncation": True,
            "max_length": model.config.text_config.max_position_embeddings,
        }
        if family == "siglip"
        else {"padding": True}
    )
    with torch.no_grad():
        tokens = tokenizer(texts, return_tensors="pt", **padding)
        inputs = {"input_ids": tokens["input_ids"]}
        if family == "clip" and "attention_mask" in tokens:  # SigLIP is trained without one
            inputs["attention_mask"] = tokens["attention_mask"]
        text = _features(model.get_text_features(**inputs)).double()
    return text / text.norm(p=2, dim=-1, keepdim=True)


def embed_texts(folder: str | Path, texts: list[str], local_only: bool = True) -> torch.Tensor:
    """The text tower of the CLIP or SigLIP model in ``folder`` on ``texts``: L2-normalised
    embeddings (texts, d), float32 as the classifier holds its class texts."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(str(folder), local_files_only=local_only).eval()
    family = contrastive_family(model.config)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=local_only)
    return _embed(model, tokenizer, family, texts).to(torch.float32)


def zero_shot_readout(family: str) -> tuple[TokenPolicy, str]:
    """Where the image tower's embedding reads: CLIP's pooled CLS token, SigLIP's attention-
    pooling head over every token."""
    if family == "CLIP":
        return TokenPolicy.cls(), "the CLS token (pooled, projected, matched to the class texts)"
    return TokenPolicy.all(), "all tokens (attention-pooling head, matched to the class texts)"
