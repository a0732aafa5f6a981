"""Every supported model family: the neuron is read where the head reads, paths are live, and
find -> evaluate -> classes -> prune runs end to end on a local folder."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from torch import nn

import literal
from conftest import make_image_folder
from families import (
    EXPECTED_READOUT,
    FAMILIES,
    ZERO_SHOT,
    build,
    image_size,
    save_family,
    save_tokenizer,
)
from neuronpath.cli import main
from neuronpath.engine.adapter import ModelAdapter
from neuronpath.engine.attribution import AttributionConfig, clean_pass
from neuronpath.engine.interventions import scale_neurons
from neuronpath.engine.readout import probe
from neuronpath.engine.tokens import TokenPolicy
from neuronpath.errors import ModelLoadError
from neuronpath.io.store import read_manifest, read_records
from neuronpath.methods import find_paths
from neuronpath.models.loading import load_model

STEPS = 3


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: save_family(f, root / f) for f in FAMILIES}


def _load(folders, family, **kwargs):
    classes = str(folders[family] / "classes.tsv") if family in ZERO_SHOT else None
    return load_model(str(folders[family]), dtype=torch.float64, classes=classes, **kwargs)


def _pixels(family, n=4, seed=1):
    size = image_size(family)
    return torch.randn(
        n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def _read_positions(adapter, x):
    """Literal: positions of the last block's FFN hidden state (the input of its output
    projection) with a non-zero gradient to the logits."""
    site = dict(adapter.model.named_modules())[adapter.site_names[-1]]
    kept = {}

    def hook(module, args):
        args[0].retain_grad()
        kept["out"] = args[0]

    handle = site.register_forward_pre_hook(hook)
    try:
        logits = adapter.logits(x)
        (logits * torch.randn(logits.shape, dtype=logits.dtype)).sum().backward()
    finally:
        handle.remove()
    grad = kept["out"].grad
    return [p for p in range(grad.shape[1]) if grad[:, p].abs().sum() > 0], grad.shape[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_policy_holds_exactly_the_positions_the_head_reads(folders, family):
    adapter = _load(folders, family)
    assert adapter.token.name == EXPECTED_READOUT[family]
    assert adapter.readout and "gradient probe" not in adapter.readout.reason  # recognised family
    read, count = _read_positions(adapter, _pixels(family).requires_grad_(True))
    assert read == adapter.token.positions(count)
    found = probe(adapter)
    for layer in range(adapter.num_layers):  # the last stage reads there; earlier stages all
        policy = adapter.token_at(layer)
        if found.tokens[layer] == found.tokens[-1]:
            assert policy == adapter.token
        else:
            assert policy.positions(found.tokens[layer]) == list(range(found.tokens[layer]))


@pytest.mark.parametrize("family", FAMILIES)
def test_zeroing_the_last_path_neuron_changes_the_target_probability(folders, family):
    adapter = _load(folders, family)
    x, y = _pixels(family), torch.tensor([0, 1, 2, 0])
    result = find_paths(adapter, x, y, ["jas"], AttributionConfig(steps=STEPS))
    last = adapter.num_layers - 1
    with torch.no_grad():
        base = adapter.logits(x).softmax(-1)[torch.arange(4), y]
        with scale_neurons(adapter, {last: result.paths["jas"][:, last]}, 0.0):
            edited = adapter.logits(x).softmax(-1)[torch.arange(4), y]
    assert ((edited - base).abs() > 1e-12).float().mean() > 0.5


@pytest.mark.parametrize("family", FAMILIES)
def test_find_evaluate_classes_prune_end_to_end(folders, family, tmp_path):
    data = make_image_folder(tmp_path / "images")
    run = tmp_path / "run"
    extra = ["--classes", str(folders[family] / "classes.tsv")] if family in ZERO_SHOT else []
    common = ["--model", str(folders[family]), "--data", str(data), "--device", "cpu", *extra]
    assert main(["-q", "find", *common, "--out", str(run), "--steps", str(STEPS)]) == 0
    manifest = read_manifest(run)
    assert manifest["settings"]["token"] == EXPECTED_READOUT[family]
    assert manifest["model"]["readout"]
    assert len(read_records(run)) == 2 * 12
    assert main(["-q", "evaluate", str(run), "--device", "cpu", "--bootstrap", "20"]) == 0
    assert main(["-q", "classes", str(run), "--permutations", "20"]) == 0
    assert (run / "classes-jas" / "utilisation.npz").is_file()
    assert main(["-q", "report", str(run), "--device", "cpu", "--images", "3", "--cards", "2"]) == 0
    assert (run / "report" / "index.html").is_file()
    assert (
        main(
            [
                "-q",
                "prune",
                *common,
                "--out",
                str(tmp_path / "prune"),
                "--keep",
                "1,2",
                "--mask",
                "1.0",
                "--steps",
                str(STEPS),
                "--bootstrap",
                "20",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "prune" / "results.json").read_text())
    assert results["widths"] == manifest["model"]["widths"]


def test_swin_blocks_have_their_own_widths_and_token_counts(folders):
    adapter = _load(folders, "swin")
    found = probe(adapter)
    assert found.hierarchical and found.tokens == (64, 64, 16, 16)
    assert adapter.widths() == [16, 16, 32, 32]
    with pytest.raises(ValueError, match="different FFN widths"):
        adapter.width()


def test_swin_paths_and_final_jas_equal_the_literal_pooled_loop():
    model = build("swin", seed=3)
    names = [n for n, _ in model.named_modules() if n.endswith("mlp.activation_fn")]
    adapter = ModelAdapter(
        model, names, forward=lambda x: model(pixel_values=x), input_shape=(3, 16, 16)
    )
    assert adapter.token.name == "all" and "gradient probe" in adapter.readout.reason
    x, y = _pixels("swin", 2, seed=5), torch.tensor([2, 0])
    result = find_paths(
        adapter, x, y, ["jas", "activation", "knowledge"], AttributionConfig(steps=STEPS)
    )
    for b in range(2):
        x1, label = x[b : b + 1], int(y[b])
        jas = literal.pooled_jas_path(model, x1, label, STEPS)
        assert result.paths["jas"][b].tolist() == jas
        assert result.scores["jas"][b].item() == pytest.approx(
            literal.pooled_final_jas(model, x1, label, jas, STEPS), rel=1e-9
        )
        assert result.paths["activation"][b].tolist() == literal.pooled_activation_path(model, x1)
    # knowledge: per-layer argmax within each layer's own width; top-5 never names a missing neuron
    widths = adapter.widths()
    for top in result.extras["knowledge"]["top"]:
        assert all(n < widths[l] for l, n, _ in top)


@pytest.mark.parametrize("family", ZERO_SHOT)
def test_zero_shot_logits_are_the_models_own(folders, family):
    adapter = _load(folders, family)
    assert adapter.id2label == {0: "cat", 1: "dog", 2: "fish"}
    details = adapter.describe()["zero_shot"]
    assert details["prompt"] == "a photo of a {}." and len(details["text_embeddings_sha256"]) == 64
    model = transformers.AutoModel.from_pretrained(str(folders[family])).double().eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folders[family]))
    texts = [f"a photo of a {n}." for n in ("cat", "dog", "fish")]
    padding = (
        {"padding": "max_length", "max_length": 16} if "siglip" in family else {"padding": True}
    )
    tokens = tokenizer(texts, return_tensors="pt", **padding)
    if "siglip" in family:
        tokens.pop("attention_mask")
    x = _pixels(family)
    with torch.no_grad():
        expected = model(pixel_values=x, **tokens).logits_per_image
        assert torch.allclose(adapter.logits(x), expected, rtol=1e-5, atol=1e-6)


def test_a_contrastive_model_without_classes_is_refused_in_one_line(folders, tmp_path, capsys):
    data = make_image_folder(tmp_path / "images", per_class=1)
    assert (
        main(
            [
                "find",
                "--model",
                str(folders["clip-zero-shot"]),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CLIPModel" in err and "--classes FILE" in err


def test_classes_for_a_classifier_are_refused(folders):
    with pytest.raises(ModelLoadError, match="needs a CLIP or SigLIP model"):
        load_model(str(folders["vit"]), classes=str(folders["clip-zero-shot"] / "classes.tsv"))


def test_a_classifier_head_missing_from_the_checkpoint_is_refused(tmp_path):
    build("dinov2").dinov2.save_pretrained(tmp_path / "backbone")  # no classifier weights
    config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    config["architectures"] = ["Dinov2ForImageClassification"]
    (tmp_path / "backbone" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="lacks weights for .*classifier"):
        load_model(str(tmp_path / "backbone"))


def test_a_token_override_the_head_cannot_read_is_refused(folders, tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"'cls' includes positions 0 .* reads the mean of the patch"
    ):
        _load(folders, "beit", token="cls")
    narrowed = _load(folders, "swin", token="0")  # the last stage narrowed; earlier stages all
    assert narrowed.token.name == "index:0" and narrowed.token_at(0).name == "all"
    with pytest.raises(ValueError, match="needs token positions up to 99"):
        _load(folders, "swin", token="99")
    data = make_image_folder(tmp_path / "images", per_class=1)
    assert (
        main(
            [
                "find",
                "--model",
                str(folders["clip-classifier"]),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "run"),
                "--token",
                "cls",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CLIPForImageClassification" in err
    assert _load(folders, "dinov2-registers", token="cls").token.name == "cls"  # a subset is fine


class PickyHead(nn.Module):
    """An unknown family: two blocks of FFNs; the head reads tokens 1 and 3 only."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 6)) for _ in range(2)
        )
        self.head = nn.Linear(12, 3)

    def forward(self, x):  # x: (B, 3, 1, 5) -> 5 tokens
        h = self.embed(x.flatten(2).transpose(1, 2))
        for block in self.blocks:
            h = h + block(h)
        return self.head(torch.cat([h[:, 1], h[:, 3]], dim=-1))


def test_an_unrecognised_model_is_read_where_the_gradient_probe_says():
    model = PickyHead().double()
    adapter = ModelAdapter(model, ["blocks.0.1", "blocks.1.1"], input_shape=(3, 1, 5))
    assert adapter.token.name == "positions:1,3" and "gradient probe" in adapter.readout.reason
    x = torch.randn(2, 3, 1, 5, dtype=torch.float64)
    clean = clean_pass(adapter, x, torch.tensor([0, 1]))
    assert clean.acts[0].shape == (2, 2, 5)
    with pytest.raises(ValueError, match="positions 0, 2, 4 whose last-layer neurons"):
        ModelAdapter(model, ["blocks.0.1", "blocks.1.1"], input_shape=(3, 1, 5), token="all")


def test_a_family_table_that_disagrees_with_the_probe_is_logged_not_fatal(caplog):
    """A wrong family entry (here: CLS for a model whose head reads tokens 1 and 3) is named in
    a warning; the probe's positions are read."""
    model = PickyHead().double()
    adapter = ModelAdapter(
        model,
        ["blocks.0.1", "blocks.1.1"],
        input_shape=(3, 1, 5),
        family_readout=(TokenPolicy.cls(), "the CLS token"),
    )
    assert adapter.token.name == "positions:1,3"
    assert "family table says the head reads the CLS token" in caplog.text


def test_hiera_maps_equal_its_own_reordering_to_the_image(folders):
    """Hiera keeps its tokens "unrolled"; the adapter's layout puts each back where the model's
    own reroll (its reshaped hidden states, height x width) puts it, stage by stage."""
    adapter = _load(folders, "hiera")
    x = _pixels("hiera", 2)
    with torch.no_grad():
        out = adapter.model(pixel_values=x, output_hidden_states=True)
    stages = transformers.HieraConfig.from_pretrained(folders["hiera"]).depths
    first = [sum(stages[:s]) for s in range(len(stages))]  # the first block of each stage
    for stage, layer in enumerate(first):
        hidden, spatial = out.hidden_states[stage + 1], out.reshaped_hidden_states[stage + 1]
        layout = adapter.layout(layer, hidden.shape[1])
        for channel in (0, 3):
            got = layout.image_map(hidden[1, :, channel])
            assert torch.equal(got, spatial[1, :, :, channel]), (stage, channel)
    assert adapter.layout(0).order != tuple(range(len(adapter.layout(0).order)))  # not raster


@pytest.mark.parametrize("family", ["vit", "swin", "cvt", "pvt"])
def test_raster_maps_put_each_patch_where_the_image_has_it(folders, family):
    """A per-patch image (each patch's pixels hold its raster index) read through the layout
    of the first block gives back the raster grid."""
    adapter = _load(folders, family)
    found = probe(adapter)
    layout = adapter.layout(0)
    assert layout.kind == "grid" and layout.order is None
    assert layout.prefix + layout.height * layout.width == found.tokens[0]
    tokens = torch.arange(found.tokens[0], dtype=torch.float64)
    assert torch.equal(layout.image_map(tokens).flatten(), tokens[layout.prefix :])


def test_zero_shot_prompt_and_tokenizer_errors(folders, tmp_path):
    with pytest.raises(ValueError, match="prompt"):
        _load(folders, "clip-zero-shot", prompt="no placeholder")
    bare = tmp_path / "bare"
    build("clip-zero-shot").save_pretrained(bare)
    (bare / "classes.tsv").write_text("cat\tcat\n")
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model(str(bare), classes=str(bare / "classes.tsv"))
    save_tokenizer(bare)
    assert load_model(str(bare), classes=str(bare / "classes.tsv")).id2label == {0: "cat"}
    (bare / "classes.tsv").write_text("cat\tcat\nn01440764\ttench\n")
    with pytest.raises(ValueError, match=r"knows no word of the class names \['tench'\]"):
        load_model(str(bare), classes=str(bare / "classes.tsv"))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_heads_read_where_its_neurons_are(folders, family):
    """--units heads on every family: one head site per block, read at the positions its
    block's neurons are read at (the gradient probe), and zeroing the last head of each image's
    head path changes the target probability."""
    neurons = _load(folders, family)
    adapter = _load(folders, family, units="heads")
    assert adapter.num_layers == neurons.num_layers and set(adapter.kinds) == {"head"}
    found = probe(adapter)
    for layer in range(adapter.num_layers):
        if found.tokens[layer] == probe(neurons).tokens[layer]:  # windowed attention differs
            assert adapter.token_at(layer) == neurons.token_at(layer)
    x, y = _pixels(family), torch.tensor([0, 1, 2, 0])
    result = find_paths(adapter, x, y, ["jas"], AttributionConfig(steps=STEPS))
    last = adapter.num_layers - 1
    with torch.no_grad():
        base = adapter.logits(x).softmax(-1)[torch.arange(4), y]
        with scale_neurons(adapter, {last: result.paths["jas"][:, last]}, 0.0):
            edited = adapter.logits(x).softmax(-1)[torch.arange(4), y]
    assert ((edited - base).abs() > 1e-12).float().mean() > 0.5
