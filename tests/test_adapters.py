"""Model adapters: FFN site discovery across naming schemes, token policies, errors."""

import pytest
import torch
from torch import nn
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
)

from neuronpath.engine.adapter import ModelAdapter
from neuronpath.engine.attribution import AttributionConfig
from neuronpath.engine.interventions import record_neurons
from neuronpath.engine.sites import find_ffn_sites
from neuronpath.engine.tokens import TokenPolicy
from neuronpath.methods import find_paths
from neuronpath.models.huggingface import from_hf_model


class Block(nn.Module):
    """A block named the way transformers 4.x names ViT's (intermediate.intermediate_act_fn)."""

    def __init__(self, width, ffn):
        super().__init__()
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(width, ffn)
        self.intermediate.intermediate_act_fn = nn.GELU()
        self.output = nn.Linear(ffn, width)

    def forward(self, x):
        return x + self.output(self.intermediate.intermediate_act_fn(self.intermediate.dense(x)))


class OldStyleViT(nn.Module):
    def __init__(self, layers=3, width=8, ffn=10, classes=4):
        super().__init__()
        self.embed = nn.Linear(12, width)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Block(width, ffn) for _ in range(layers))
        self.head = nn.Linear(width, classes)

    def forward(self, x):  # x: (B, 3, 2, 2) -> 1 CLS-like token + 0 patches, enough for tests
        h = self.embed(x.flatten(1))[:, None, :].repeat(1, 2, 1)
        for block in self.encoder.layer:
            h = block(h)
        return self.head(h[:, 0])


def _sites(model, shape=(2, 3, 2, 2), num_layers=None):
    return find_ffn_sites(model, model, shape[1:], num_layers)


def test_transformers4_style_names_are_found():
    """The FFN hidden state is the input of the output projection, found by the order in which
    the block's modules run (here ``output``, a sibling of ``intermediate``)."""
    names = _sites(OldStyleViT(), num_layers=3)
    assert names == [f"encoder.layer.{i}.output" for i in range(3)]


def test_generic_adapter_runs_the_search():
    torch.manual_seed(0)
    model = OldStyleViT().double()
    adapter = ModelAdapter(model, ffn_inputs=_sites(model), input_shape=(3, 2, 2))
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64)
    result = find_paths(adapter, x, torch.tensor([0, 3]), config=AttributionConfig(steps=3))
    assert result.paths["jas"].shape == (2, 3)
    assert (result.paths["jas"] < 10).all()
    # reading the input of the output projection is reading the activation's output
    acts = ModelAdapter(
        model,
        [f"encoder.layer.{i}.intermediate.intermediate_act_fn" for i in range(3)],
        input_shape=(3, 2, 2),
    )
    with record_neurons(adapter) as a, record_neurons(acts) as b:
        model(x)
    assert all(torch.equal(a[l], b[l]) for l in range(3))


class TimmBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.Linear(4, 4)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)
        self.proj = nn.Linear(4, 4)  # registered after the MLP, runs before it (as in Hiera)

    def forward(self, x):
        x = x + self.attn(self.proj(x))
        return x + self.mlp.fc2(self.mlp.act(self.mlp.fc1(x)))


def test_timm_style_names_are_found_by_the_order_modules_run():
    model = nn.Sequential()
    model.blocks = nn.Sequential(TimmBlock(), TimmBlock())
    assert _sites(model, (2, 5, 4), 2) == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]


class GatedBlock(nn.Module):
    """A SwiGLU FFN: down(silu(gate(x)) * up(x)), no activation module."""

    def __init__(self, width=4, ffn=6):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.gate_proj, self.mlp.up_proj = nn.Linear(width, ffn), nn.Linear(width, ffn)
        self.mlp.down_proj = nn.Linear(ffn, width)

    def forward(self, x):
        m = self.mlp
        return x + m.down_proj(nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))


def test_a_gated_ffn_is_read_at_the_input_of_its_down_projection():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.layers = nn.Sequential(GatedBlock(), GatedBlock())
    assert _sites(model, (2, 5, 4)) == ["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]
    adapter = ModelAdapter(model, ffn_inputs=_sites(model, (2, 5, 4)), token="all")
    x = torch.randn(3, 5, 4)
    with record_neurons(adapter) as got:
        model(x)
    m = model.layers[0].mlp
    assert torch.allclose(got[0], nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))


def test_shared_modules_are_refused():
    model = OldStyleViT()
    shared = nn.Linear(10, 8)
    for block in model.encoder.layer:
        block.output = shared
    with pytest.raises(ValueError, match="output projection"):
        _sites(model, num_layers=3)
    names = ["encoder.layer.0.output", "encoder.layer.1.output"]
    with pytest.raises(ValueError, match="several layers"):
        ModelAdapter(model, ffn_inputs=names, token="cls")


def test_missing_site_names_are_reported():
    with pytest.raises(ValueError, match="no module named"):
        ModelAdapter(OldStyleViT(), ["encoder.layer.0.nope"], token="cls")


def test_a_hand_built_adapter_without_a_token_runs_the_probe():
    """No token given: the gradient probe decides (a mean-pooled model reads its patches)."""
    torch.manual_seed(0)
    model = OldStyleViT().double()
    pooled = nn.Module()
    pooled.forward = lambda x: model.head(
        model.encoder.layer[-1](
            model.encoder.layer[0](model.embed(x.flatten(1))[:, None, :].repeat(1, 3, 1))
        )[:, 1:].mean(1)
    )
    adapter = ModelAdapter(
        model,
        ffn_inputs=["encoder.layer.0.output", "encoder.layer.2.output"],
        forward=pooled.forward,
        input_shape=(3, 2, 2),
    )
    assert adapter.token.name == "patches:1" and "gradient probe" in adapter.readout.reason
    with pytest.raises(ValueError, match="input_shape"):
        ModelAdapter(model, ffn_inputs=["encoder.layer.0.output"])


def _deit(cls):
    torch.manual_seed(0)
    config = DeiTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=12,
        num_labels=3,
    )
    model = cls(config).double().eval()
    with torch.no_grad():  # random CLS and distillation tokens (they start as zeros)
        model.deit.embeddings.cls_token.normal_()
        model.deit.embeddings.distillation_token.normal_()
    return model


def test_deit_reads_cls_and_refuses_the_unread_distillation_token():
    model = _deit(DeiTForImageClassification)
    assert from_hf_model(model).token == TokenPolicy.cls()
    with pytest.raises(ValueError, match="positions 1 whose last-layer neurons cannot influence"):
        from_hf_model(model, token="distillation")


def test_deit_with_teacher_reads_cls_and_distillation_tokens():
    model = _deit(DeiTForImageClassificationWithTeacher)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    both = from_hf_model(model)
    assert both.token.spans == ((0, 2),) and "distillation" in both.readout.reason
    cls_adapter = from_hf_model(model, token="cls")
    dist_adapter = from_hf_model(model, token="distillation")
    assert cls_adapter.token == TokenPolicy.cls() and dist_adapter.token.start == 1
    with record_neurons(cls_adapter) as a:
        model(pixel_values=x)
    with record_neurons(dist_adapter) as b:
        model(pixel_values=x)
    with record_neurons(both) as c:
        model(pixel_values=x)
    assert not torch.equal(a[0], b[0])  # the two tokens really differ
    assert torch.equal(c[0], torch.cat([a[0], b[0]], dim=1))
    result = find_paths(both, x, torch.tensor([0, 2]), config=AttributionConfig(steps=3))
    assert result.paths["jas"].shape == (2, 2)


def test_token_policy_parsing():
    assert TokenPolicy.parse("cls") == TokenPolicy.cls()
    assert TokenPolicy.parse("3").start == 3
    assert TokenPolicy.parse("patches").start == 1 and TokenPolicy.parse("patches").stop is None
    with pytest.raises(ValueError, match="no distillation token"):
        TokenPolicy.parse("distillation")
    with pytest.raises(ValueError, match="token"):
        TokenPolicy.parse("middle")


def test_weights_hash_changes_with_weights(vit64):
    adapter = from_hf_model(vit64)
    before = adapter.weights_hash()
    assert before == from_hf_model(vit64).weights_hash()
    with torch.no_grad():
        vit64.classifier.bias[0] += 1
    assert adapter.weights_hash() != before
