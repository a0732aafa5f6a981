"""The neuron atlas (``neuronpath neurons``) against plain loops: top and bottom images, peak
patches, text labels (direct effects) on tiny float64 models; resumable, torchrun-shared and
bounded in memory; bad input gets one line."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch

import literal
from conftest import make_image_folder, save_tiny_model
from families import save_family
from neuronpath.analysis.unitstats import UnitStats, image_key
from neuronpath.cli import main
from neuronpath.engine.direct import direct_effects
from neuronpath.experiments.neurons import AtlasOptions, NeuronsOptions, read_atlas, run_neurons
from neuronpath.io.images import interleave_classes, load_image, scan_image_folder
from neuronpath.io.store import read_records
from neuronpath.models.loading import load_model
from test_distributed import _child_with_rank, finish, torchrun

FIND = ["-q", "find", "--steps", "2", "--device", "cpu", "--dtype", "float64"]


def _find(tmp_path, model, data, *extra, name="run"):
    run = tmp_path / name
    args = [*FIND, "--model", str(model), "--data", str(data), "--out", str(run), *extra]
    assert main(args) == 0
    return run


def _plain_values(model, adapter, data):
    """Per image, every FFN layer's post-activation values at every token, by a plain hook on
    the activation module (not neuronpath's), on the images the adapter preprocesses."""
    items = interleave_classes(scan_image_folder(data, adapter.id2label).items)
    out = {}
    for item in items:
        x = adapter.preprocess(load_image(item.path))[None].double()
        found = {}
        hooks = [
            site.register_forward_hook(
                lambda m, i, o, l=l: found.__setitem__(l, o[0].detach().clone())
            )
            for l, site in enumerate(literal.sites(model))
        ]
        with torch.no_grad():
            model(pixel_values=x)
        for h in hooks:
            h.remove()
        out[item.id] = found
    return out


def test_top_bottom_and_peaks_equal_a_plain_loop(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=6)
    run = _find(tmp_path, model_dir, data)
    options = NeuronsOptions(atlas=AtlasOptions(top=4, bottom=2, sample=5))
    folder = run_neurons(data, run_dir=run, options=options, execution=_cpu())
    atlas = read_atlas(folder)
    adapter = load_model(str(model_dir), dtype=torch.float64)
    values = _plain_values(adapter.model, adapter, data)
    tracked = {(l, i) for r in read_records(run) for l, i in enumerate(r["path"])}
    assert {(layer, unit) for layer, _, unit in atlas.units} == tracked
    for layer, unit in tracked:
        entry = atlas[(layer, "neuron", unit)]
        cls = {image: float(v[layer][0, unit]) for image, v in values.items()}  # CLS readout
        key = {image: image_key(0, image) for image in cls}  # ties: the smaller seeded hash
        ranked = sorted(cls, key=lambda image: (-cls[image], key[image]))
        assert [t[0] for t in entry["top"]] == ranked[:4]
        assert [t[1] for t in entry["top"]] == pytest.approx([cls[i] for i in ranked[:4]])
        low = sorted(cls, key=lambda image: (cls[image], key[image]))
        assert [t[0] for t in entry["bottom"]] == low[:2]
        for image, _, peak in entry["top"] + entry["bottom"]:  # the patch where it peaks
            patches = values[image][layer][1:, unit]
            assert peak == 1 + int(torch.argmax(patches))
        mean = np.mean(list(cls.values()))
        assert entry["mean"] == pytest.approx(mean) and entry["max"] == pytest.approx(
            max(cls.values())
        )
        assert entry["active"] == pytest.approx(np.mean([v > 0 for v in cls.values()]))
    rows = (folder / "top.csv").read_text().splitlines()
    assert rows[0] == "layer,neuron,rank,image,value,peak_token"
    assert len(rows) == 1 + len(tracked) * (4 + 2)


def _cpu():
    from neuronpath.experiments.common import Execution

    return Execution("cpu", 4)


def _residual_and_writes(adapter, x1, layer, unit):
    """The residual stream after the last block of a zero-shot tower, and neuron ``unit`` of
    block ``layer``'s write into the stream at every token (value x its column of fc2), both by
    plain hooks."""
    model = adapter.model
    found = {}
    vision = model.vision_model
    act = [m for n, m in vision.named_modules() if n.endswith("mlp.activation_fn")][layer]
    fc2 = [m for n, m in vision.named_modules() if n.endswith("mlp.fc2")][layer]
    hooks = [
        act.register_forward_hook(lambda m, i, o: found.__setitem__("h", o[0].detach().clone())),
        vision.encoder.register_forward_hook(
            lambda m, i, o: found.__setitem__("r", o.last_hidden_state[0].detach().clone())
        ),
    ]
    with torch.no_grad():
        model(x1)
    for h in hooks:
        h.remove()
    write = found["h"][:, unit, None] * fc2.weight[:, unit][None, :]  # (tokens, d)
    return found["r"], write


def _norm_frozen(norm, x, at):
    """LayerNorm of ``x`` with its scale 1/sigma taken from ``at``."""
    sigma = torch.sqrt(at.var(-1, unbiased=False, keepdim=True) + norm.eps)
    return (x - x.mean(-1, keepdim=True)) / sigma * norm.weight + norm.bias


def _embedding(model, residual, at):
    """The image embedding from the residual stream (tokens, d), with every nonlinearity after
    the last block frozen at the stream ``at`` -- written out with the towers' own weights:
    CLIP's final norm of the CLS token and projection; SigLIP's final norm, then its pooling
    head head by head (attention weights from ``at``), its norm and its MLP, whose activation
    is the gate act(u)/u at ``at``."""
    vision = model.vision_model
    if getattr(vision, "head", None) is None:
        return model.visual_projection(_norm_frozen(vision.post_layernorm, residual[0], at[0]))
    head, post = vision.head, vision.post_layernorm
    x, x0 = _norm_frozen(post, residual, at), _norm_frozen(post, at, at)
    mha = head.attention
    d, n_heads = mha.embed_dim, mha.num_heads
    size = d // n_heads
    w_q, w_k, w_v = (
        mha.in_proj_weight[:d],
        mha.in_proj_weight[d : 2 * d],
        mha.in_proj_weight[2 * d :],
    )
    b_q, b_k, b_v = mha.in_proj_bias[:d], mha.in_proj_bias[d : 2 * d], mha.in_proj_bias[2 * d :]
    probe = head.probe[0, 0]

    def pool(tokens, weights_of):
        parts = []
        for h in range(n_heads):
            rows = slice(h * size, (h + 1) * size)
            weights = weights_of[h]
            values = [tokens[j] @ w_v[rows].T + b_v[rows] for j in range(tokens.shape[0])]
            parts.append(sum(weights[j] * values[j] for j in range(len(values))))
        return mha.out_proj(torch.cat(parts))

    weights = []
    with torch.no_grad():
        for h in range(n_heads):
            rows = slice(h * size, (h + 1) * size)
            q = probe @ w_q[rows].T + b_q[rows]
            scores = torch.stack([q @ (k @ w_k[rows].T + b_k[rows]) for k in x0]) / size**0.5
            weights.append(scores.softmax(0))
        pooled0 = pool(x0, weights)
        u0 = head.mlp.fc1(head.layernorm(pooled0))
        gate = head.mlp.activation_fn(u0) / u0
    pooled = pool(x, weights)
    u = head.mlp.fc1(_norm_frozen(head.layernorm, pooled, pooled0))
    return pooled + head.mlp.fc2(gate * u)


@pytest.mark.parametrize("family", ["clip-zero-shot", "siglip-zero-shot"])
def test_text_labels_equal_a_hand_computation_of_direct_effects(family, tmp_path):
    folder = save_family(family, tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=2)
    run = _find(tmp_path, folder, data, "--classes", str(folder / "classes.tsv"))
    options = NeuronsOptions(atlas=AtlasOptions(top=2, bottom=1))
    atlas_dir = run_neurons(data, run_dir=run, options=options, execution=_cpu())
    atlas = read_atlas(atlas_dir)
    adapter = load_model(str(folder), dtype=torch.float64, classes=str(folder / "classes.tsv"))
    texts = adapter.model.text_embeddings.double()
    names = adapter.embedding_head.names
    items = interleave_classes(scan_image_folder(data, adapter.id2label).items)
    for (layer, kind, unit), entry in list(atlas.units.items())[:4]:
        want = np.zeros(len(names))
        for item in items:
            x1 = adapter.preprocess(load_image(item.path))[None].double()
            residual, write = _residual_and_writes(adapter, x1, layer, unit)
            for c in range(len(names)):  # d<e(R + eps write), t_c>/d eps at eps = 0
                eps = torch.zeros((), dtype=torch.float64, requires_grad=True)
                score = _embedding(adapter.model, residual + eps * write, residual) @ texts[c]
                want[c] += torch.autograd.grad(score, eps)[0].item() / len(items)
        got = dict(entry["labels"])
        assert [got[n] for n in names] == pytest.approx(want.tolist(), rel=1e-6, abs=1e-9)
        assert [w for w, _ in entry["labels"]] == [
            names[c] for c in np.argsort(-want, kind="stable")
        ]
    assert (atlas_dir / "labels.csv").read_text().startswith("layer,neuron,rank,label,score")


@pytest.mark.parametrize("family", ["clip-zero-shot", "siglip-zero-shot"])
def test_the_direct_effects_of_all_components_sum_to_the_image_text_score(family, tmp_path):
    """Every unit's direct effect (every neuron and head of every block), plus those of the
    rest of the stream (the embeddings and the output projections' biases) and the map's own
    bias part, add up to <e, t> for every class text: the decomposition is complete.  Through
    the live final norm they would sum to nearly nothing (its derivative at R applied to R is
    zero)."""
    folder = save_family(family, tmp_path / "model")
    adapter = load_model(
        str(folder),
        dtype=torch.float64,
        classes=str(folder / "classes.tsv"),
        units="neurons+heads",
    )
    model, vision = adapter.model, adapter.model.vision_model
    texts = model.text_embeddings.double()
    size = vision.config.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(3)).double()
    every = {s: torch.arange(adapter.widths()[s]) for s in range(adapter.num_layers)}
    units = sum(
        e.sum(1) for e in direct_effects(adapter, adapter.embedding_head, x, every).values()
    )
    found = {"attention": [], "mlp": []}
    attention = [m for n, m in vision.encoder.named_modules() if n.endswith("self_attn")]
    mlps = [m for n, m in vision.encoder.named_modules() if n.endswith(".mlp")]
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o, k=k: found[k].append(o[0] if isinstance(o, tuple) else o)
        )
        for k, ms in (("attention", attention), ("mlp", mlps))
        for m in ms
    ]
    hooks.append(
        vision.encoder.register_forward_hook(
            lambda mod, i, o: found.__setitem__("residual", o.last_hidden_state)
        )
    )
    with torch.no_grad():
        image = (
            model.visual_projection(vision(pixel_values=x).pooler_output)
            if (model.visual_projection is not None)
            else vision(pixel_values=x).pooler_output
        )
    for h in hooks:
        h.remove()
    residual = found["residual"]
    biases = sum(a.out_proj.bias + m.fc2.bias for a, m in zip(attention, mlps))
    embeddings = residual - sum(found["attention"]) - sum(found["mlp"])
    rest = embeddings + biases  # what no unit writes
    for b in range(x.shape[0]):
        at = residual[b]
        with torch.no_grad():
            bias_part = _embedding(model, torch.zeros_like(at), at)
            rest_part = _embedding(model, rest[b], at) - bias_part
            assert torch.allclose(_embedding(model, at, at), image[b], rtol=1e-12, atol=1e-12)
        total = units[b] + (rest_part + bias_part) @ texts.T
        assert torch.allclose(total, image[b] @ texts.T, rtol=1e-9, atol=1e-11)


def test_unit_statistics_do_not_grow_with_the_images():
    def state(images):
        stats = UnitStats([6, 4], [[0, 3, 5], [1]], top=3, bottom=2, sample=8, seed=0)
        rng = np.random.default_rng(0)
        for start in range(0, images, 50):
            ids = [f"img{i:06d}" for i in range(start, min(start + 50, images))]
            levels = [rng.normal(size=(len(ids), 6)), rng.normal(size=(len(ids), 4))]
            stats.add(ids, levels, [np.zeros((len(ids), 6), int), np.zeros((len(ids), 4), int)])
        return {k: v.shape for k, v in stats.to_arrays().items() if k != "images"}

    assert state(100) == state(5000)


def test_the_pass_keeps_a_bounded_state_over_many_small_images(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    few = make_image_folder(tmp_path / "few", per_class=7)  # more than the sample
    many = make_image_folder(tmp_path / "many", per_class=60)
    units = "0:1,1:2,2:3"
    shapes = []
    for data in (few, many):
        out = tmp_path / f"atlas-{data.name}"
        options = NeuronsOptions(select=units, out=out, atlas=AtlasOptions(sample=16))
        run_neurons(data, spec=str(model), options=options, execution=_cpu())
        state = np.load(out / "state.rank0.npz")
        shapes.append({k: state[k].shape for k in state.files if k != "images"})
        assert read_atlas(out).images == (21 if data is few else 180)
    assert shapes[0] == shapes[1]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_a_killed_pass_resumes_and_two_ranks_give_the_atlas_of_one_process(tmp_path):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=20)
    common = ["neurons", "--model", str(model), "--select", "0:1,1:2,2:h1", "--data", str(data)]
    common += ["--device", "cpu", "--batch-size", "1", "--top", "3", "--sample", "10"]
    out = tmp_path / "two"
    process = torchrun(2, ["-q", *common, "--out", str(out)])
    state = out / "state.rank1.npz"
    deadline = time.time() + 120
    while time.time() < deadline and not (
        state.is_file() and "\n" in str(np.load(state)["images"])
    ):
        time.sleep(0.05)
    victim = _child_with_rank(process.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    assert finish(process)[0] != 0
    assert not (out / "atlas.npz").exists()
    code, _, err = finish(torchrun(2, ["-q", *common, "--out", str(out)]))
    assert code == 0, err
    assert sorted(p.name for p in out.glob("state*")) == ["state.rank0.npz"]  # as one process
    assert main(["-q", *common, "--out", str(out)]) == 0  # finished: nothing redone or recounted
    assert main(["-q", *common, "--out", str(tmp_path / "one")]) == 0
    two, one = read_atlas(out), read_atlas(tmp_path / "one")
    assert two.images == one.images == 60 and two.units.keys() == one.units.keys()
    for key, entry in one.units.items():
        got = two[key]
        assert [t[0] for t in got["top"]] == [t[0] for t in entry["top"]]
        assert [t[2] for t in got["top"]] == [t[2] for t in entry["top"]]
        assert [t[0] for t in got["bottom"]] == [t[0] for t in entry["bottom"]]
        for field in ("mean", "min", "max", "active"):
            assert got[field] == pytest.approx(entry[field], rel=1e-9)
        assert got["quantiles"] == pytest.approx(entry["quantiles"])


def test_bad_atlas_input_gets_one_line(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=2)

    def error(*args):
        capsys.readouterr()
        assert main(["neurons", *args, "--data", str(data), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    empty = _find(tmp_path, model, data)
    (empty / "records.jsonl").write_text("")
    assert "the run has no paths" in error(str(empty))
    out = ["--out", str(tmp_path / "atlas")]
    assert "layer 1 has 12 neurons (0..11)" in error(
        "--model", str(model), "--select", "1:12", *out
    )
    assert "the model has layers 0..2" in error("--model", str(model), "--select", "7:0", *out)
    assert "--select: expected LAYER:INDEX" in error("--model", str(model), "--select", "3", *out)
    assert "outside the model's layers 0..2" in error("--model", str(model), "--layers", "5", *out)
    words = tmp_path / "words.txt"
    words.write_text("cat\n")
    assert "text labels need a zero-shot CLIP or SigLIP model" in error(
        "--model", str(model), "--select", "1:0", "--vocabulary", str(words), *out
    )
    capsys.readouterr()  # the old spelling --units still works, with a line saying it moved
    assert (
        main(
            ["-q", "neurons", "--model", str(model), "--units", "1:0", *out[:1]]
            + [str(tmp_path / "old"), "--data", str(data), "--device", "cpu"]
        )
        == 0
    )
    assert "--units is now --select" in capsys.readouterr().err
    clip = save_family("clip-zero-shot", tmp_path / "clip")
    run = _find(tmp_path, clip, data, "--classes", str(clip / "classes.tsv"), name="clip-run")
    (tmp_path / "blank.txt").write_text("\n \n")
    assert "has no words" in error(str(run), "--vocabulary", str(tmp_path / "blank.txt"))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    assert "as a UTF-8 text file" in error(str(run), "--vocabulary", str(tmp_path / "binary.txt"))
    words.write_text("cat\nfish\ncat\n")
    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "neurons",
                str(run),
                "--data",
                str(data),
                "--device",
                "cpu",
                "--vocabulary",
                str(words),
                "--out",
                str(tmp_path / "v"),
            ]
        )
        == 0
    )
    entry = next(iter(read_atlas(tmp_path / "v").units.values()))
    assert sorted(w for w, _ in entry["labels"]) == ["cat", "fish"]  # a repeated word once


def test_the_page_shows_each_cards_atlas_and_filters_cards(tmp_path):
    from selenium.webdriver.common.by import By

    from test_report import _browser

    model = save_tiny_model(tmp_path / "model")
    data = make_image_folder(tmp_path / "images", per_class=3)
    run = _find(tmp_path, model, data, "--units", "heads")
    assert main(["-q", "neurons", str(run), "--data", str(data), "--device", "cpu"]) == 0
    assert main(["-q", "report", str(run), "--device", "cpu", "--cards", "4"]) == 0
    browser = _browser()
    try:
        browser.get((run / "report" / "index.html").as_uri() + "#neurons")
        cards = browser.find_elements(By.CSS_SELECTOR, "#cards .card")
        assert len(cards) == 4
        for card in cards:
            atlas = card.find_element(By.CSS_SELECTOR, ".atlas")
            assert atlas.find_elements(By.CSS_SELECTOR, '[data-end="top"] canvas')
            assert atlas.find_elements(By.CSS_SELECTOR, "canvas.hist")
            assert card.find_elements(By.CSS_SELECTOR, ".uses a")  # images whose paths use it
        name = cards[0].find_element(By.TAG_NAME, "h3").text  # "layer L, head H"
        layer, head = name.split(",")[0].split()[1], name.split()[-1]
        browser.find_element(By.ID, "card-search").send_keys(f"L{layer} H{head}")
        shown = [c for c in cards if c.is_displayed()]
        assert shown == [cards[0]]
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
    finally:
        browser.quit()
