"""Sparse-autoencoder latents as units (issue 38): the engine against plain computations on a tiny
float64 ViT with hand-built SAEs -- an SAE of the FFN hidden state (TopK) at layer 1, one of the
residual stream after block 2 (ReLU, constant-norm input rescaling) -- and both file formats read
from files written here by hand."""

from __future__ import annotations

import io
import json

import pytest
import torch

import literal
from conftest import tiny_vit
from neuronpath.engine.attribution import AttributionConfig, joint_attribution_score
from neuronpath.engine.interventions import record_neurons, replace_neurons, scale_neurons
from neuronpath.engine.sae import SparseAutoencoder
from neuronpath.errors import InputError
from neuronpath.models.huggingface import from_hf_model
from neuronpath.models.sae_files import load_sae, load_sae_spec, save_saelens

FFN, HIDDEN = 12, 16


def _random_sae(d_in, width, seed, **settings) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    return SparseAutoencoder(
        draw(d_in, width),
        draw(width, scale=0.1),
        draw(width, d_in, scale=0.3),
        draw(d_in, scale=0.1),
        **settings,
    )


def _saes():
    return {
        1: _random_sae(FFN, 20, 0, activation="topk", k=4, origin={"file": "a", "sha256": "a"}),
        2: _random_sae(
            HIDDEN,
            24,
            1,
            site="resid",
            normalize="constant_norm_rescale",
            origin={"file": "b", "sha256": "b"},
        ),
    }


def _setup():
    model = tiny_vit()
    adapter = from_hf_model(model)
    saes = _saes()
    adapter.use_saes(saes)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, adapter, saes, x


# --- plain computations, written out here ------------------------------------------------------


def plain_encode(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """f(x) of one vector x (d_in,), latent by latent."""
    if sae.normalize == "constant_norm_rescale":
        x = x * (sae.d_in**0.5) / torch.sqrt((x * x).sum())
    if sae.subtract_b_dec:
        x = x - sae.b_dec
    pre = torch.stack([(x * sae.w_enc[:, i]).sum() + sae.b_enc[i] for i in range(sae.width)])
    if sae.activation == "topk":
        order = sorted(range(sae.width), key=lambda i: -float(pre[i]))[: sae.k]
        return torch.stack(
            [pre[i].clamp_min(0) if i in order else pre[i] * 0 for i in range(sae.width)]
        )
    if sae.activation == "jumprelu":
        return torch.stack(
            [pre[i] if pre[i] > sae.threshold[i] else pre[i] * 0 for i in range(sae.width)]
        )
    return pre.clamp_min(0)


def plain_scale(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    if sae.normalize == "constant_norm_rescale":
        return torch.sqrt((x * x).sum()) / (sae.d_in**0.5)
    return torch.ones((), dtype=x.dtype)


def blocks(model):
    return list(model.vit.layers)


def clean_sites(model, x1):
    """Per layer the CLS row of what the SAE reads: the FFN hidden state (layers 0, 1), the
    residual stream after block 2."""
    h, _ = literal.clean_cls(model, x1)
    found = {}
    hook = blocks(model)[2].register_forward_hook(
        lambda m, i, o: found.__setitem__(
            2, (o[0] if isinstance(o, tuple) else o)[0, 0].detach().clone()
        )
    )
    try:
        with torch.no_grad():
            model(pixel_values=x1)
    finally:
        hook.remove()
    return {0: h[0], 1: h[1], 2: found[2]}


def logits_with_sites_replaced(model, x1, rows):
    """Logits of one image with the CLS row of layer 1's FFN hidden state and/or of block 2's
    output replaced by ``rows[l]``."""

    def block_hook(m, i, o):
        out = (o[0] if isinstance(o, tuple) else o).clone()
        out[0, 0] = rows[2]
        return (out, *o[1:]) if isinstance(o, tuple) else out

    handle = blocks(model)[2].register_forward_hook(block_hook) if 2 in rows else None
    try:
        return literal.logits_with_cls_replaced(model, x1, {l: v for l, v in rows.items() if l < 2})
    finally:
        if handle is not None:
            handle.remove()


# --- the tests ---------------------------------------------------------------------------------


def test_a_latents_value_is_its_encoder_read_at_the_site():
    model, adapter, saes, x = _setup()
    assert adapter.kinds == ("neuron", "latent", "latent") and adapter.unit_set == "sae"
    assert adapter.widths() == [FFN, 20, 24]
    with torch.no_grad(), record_neurons(adapter) as acts:
        adapter.logits(x)
    for b in range(2):
        site = clean_sites(model, x[b : b + 1])
        assert torch.allclose(acts[0][b, 0], site[0], rtol=0, atol=1e-12)
        for layer, sae in saes.items():
            want = plain_encode(sae, site[layer])
            assert torch.allclose(acts[layer][b, 0], want, rtol=1e-10, atol=1e-12)
    assert int((acts[1][:, 0] > 0).sum(-1).max()) <= 4  # TopK keeps at most k


def test_scaling_latents_moves_the_site_along_their_decoder_directions_only():
    model, adapter, saes, x = _setup()
    chosen = {1: [2, 7], 2: [5]}
    alpha = 0.3
    with torch.no_grad():
        got = {}
        for layer in chosen:
            index = torch.tensor([chosen[layer]] * 2)
            with scale_neurons(adapter, {layer: index}, alpha):
                got[layer] = adapter.logits(x)
    for b in range(2):
        x1 = x[b : b + 1]
        site = clean_sites(model, x1)
        for layer, latents in chosen.items():
            sae = saes[layer]
            f = plain_encode(sae, site[layer])
            moved = site[layer] + sum(
                (alpha - 1) * f[i] * plain_scale(sae, site[layer]) * sae.w_dec[i] for i in latents
            )
            with torch.no_grad():
                want = logits_with_sites_replaced(model, x1, {layer: moved})
            assert torch.allclose(got[layer][b], want, rtol=1e-10, atol=1e-12)


def test_alpha_one_everywhere_leaves_the_model_bit_for_bit():
    """The SAE's error term stays in the model: no latent edit with factor 1 (or a replacement
    by the clean values) changes a single bit of the output."""
    model, adapter, saes, x = _setup()
    with torch.no_grad():
        plain = model(pixel_values=x).logits
        every = {l: torch.arange(s.width).expand(2, -1) for l, s in saes.items()}
        with scale_neurons(adapter, every, 1.0):
            scaled = adapter.logits(x)
        with record_neurons(adapter, coordinates=True) as coords:
            adapter.logits(x)
        values = {l: adapter.units(l).values(coords[l]) for l in saes}
        with replace_neurons(adapter, values, directions=coords):
            replaced = adapter.logits(x)
    assert torch.equal(scaled, plain) and torch.equal(replaced, plain)


def test_the_jas_of_a_latent_path_equals_a_plain_loop():
    """Eq. 2-3 over a path of one neuron (layer 0) and two latents: per alpha the latents'
    values are leaves c = alpha f, written into their sites as x + s (c - f(x)) W_dec, and F's
    gradient is read with respect to them; the product is taken per kind (neurons, latents)."""
    model, adapter, saes, x = _setup()
    steps = 3
    for b in range(2):
        x1, label = x[b : b + 1], b + 1
        path = {0: 4, 1: int(torch.argmax(plain_encode(saes[1], clean_sites(model, x1)[1]))), 2: 3}
        got = joint_attribution_score(
            adapter, x1, torch.tensor([label]), path, AttributionConfig(steps=steps)
        )
        site = clean_sites(model, x1)
        f = {l: plain_encode(saes[l], site[l]) for l in saes}
        grads = {l: 0.0 for l in path}
        for k in range(steps):
            alpha = k / steps
            leaf0 = (alpha * site[0][path[0]]).clone().requires_grad_(True)
            leaves = {l: (alpha * f[l][path[l]]).clone().requires_grad_(True) for l in saes}
            row0 = site[0].clone()
            row0[path[0]] = leaf0
            rows = {0: row0}
            for l, sae in saes.items():
                delta = (leaves[l] - f[l][path[l]]) * plain_scale(sae, site[l]) * sae.w_dec[path[l]]
                rows[l] = site[l] + delta
            prob = logits_with_sites_replaced(model, x1, rows).softmax(-1)[label]
            found = torch.autograd.grad(prob, [leaf0, leaves[1], leaves[2]])
            for l, g in zip(path, found):
                grads[l] += float(g) / steps
        neuron_term = float(site[0][path[0]]) * grads[0]
        latent_values = float(f[1][path[1]] + f[2][path[2]])
        want = neuron_term + latent_values * (grads[1] + grads[2])
        assert float(got[0]) == pytest.approx(want, rel=1e-8, abs=1e-12)


def test_a_saelens_folder_round_trips_and_reads_as_written(tmp_path):
    sae = _saes()[1]
    folder = save_saelens(sae, tmp_path / "sae", hook="blocks.1.mlp.hook_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 4 and cfg["d_sae"] == 20
    read = load_sae(folder)
    assert read.site == "ffn" and read.activation == "topk" and read.k == 4
    assert read.origin["format"] == "saelens" and read.origin["layer"] == 1
    x = torch.randn(5, FFN, dtype=torch.float64)
    assert torch.allclose(
        read.encode(x), sae.to(dtype=torch.float32).to(dtype=torch.float64).encode(x)
    )


def test_a_hand_written_saelens_jumprelu_file_encodes_and_decodes_as_a_plain_computation(tmp_path):
    """A file built here key by key, as SAELens writes a JumpReLU SAE of the residual stream
    (older config keys, layer-norm input normalisation, no b_dec subtracted)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    w_enc, b_enc = torch.randn(HIDDEN, 10, generator=g), torch.randn(10, generator=g) * 0.1
    w_dec, b_dec = torch.randn(10, HIDDEN, generator=g) * 0.3, torch.randn(HIDDEN, generator=g)
    threshold = torch.rand(10, generator=g) * 0.5
    folder = tmp_path / "jump"
    folder.mkdir()
    save_file(
        {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec, "threshold": threshold},
        str(folder / "sae_weights.safetensors"),
    )
    (folder / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "jumprelu",
                "d_in": HIDDEN,
                "d_sae": 10,
                "apply_b_dec_to_input": False,
                "normalize_activations": "layer_norm",
                "hook_name": "blocks.2.hook_resid_post",
            }
        )
    )
    sae = load_sae(folder)
    assert sae.site == "resid" and sae.origin["layer"] == 2
    x = torch.randn(HIDDEN, dtype=torch.float64) * 3 + 1
    mu = x.mean()
    sd = torch.sqrt(((x - mu) ** 2).sum() / (HIDDEN - 1))
    n = (x - mu) / (sd + 1e-5)
    pre = n @ w_enc.double() + b_enc.double()
    want = torch.where(pre > threshold.double(), pre, torch.zeros_like(pre))
    assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)
    rebuilt = (want @ w_dec.double() + b_dec.double()) * sd + mu
    assert torch.allclose(sae.decode(sae.encode(x), x), rebuilt, rtol=1e-10, atol=1e-12)


def _saev_file(path, cls="TopK", schema=2, drop=None, exp_factor=2):
    g = torch.Generator().manual_seed(7)
    width = FFN * 2
    state = {
        "W_enc": torch.randn(FFN, width, generator=g),
        "b_enc": torch.randn(width, generator=g),
        "W_dec": torch.randn(width, FFN, generator=g),
        "b_dec": torch.randn(FFN, generator=g),
    }
    state.pop(drop, None)
    header = {
        "schema": schema,
        "cfg": {
            "d_vit": FFN,
            "exp_factor": exp_factor,
            "activation": {"cls": cls, "params": {"top_k": 3} if cls != "Relu" else {}},
        },
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes((json.dumps(header) + "\n").encode() + buffer.getvalue())
    return state


def test_a_hand_written_saev_checkpoint_encodes_as_saev_does(tmp_path):
    """saev (schema 2): the encoder reads x as it is and its TopK keeps the k largest
    pre-activations, negative ones too; the decoder adds b_dec."""
    state = _saev_file(tmp_path / "sae.pt")
    sae = load_sae(tmp_path / "sae.pt", site="ffn")
    x = torch.randn(FFN, dtype=torch.float64)
    pre = x @ state["W_enc"].double() + state["b_enc"].double()
    top = sorted(range(FFN * 2), key=lambda i: -float(pre[i]))[:3]
    want = torch.stack([pre[i] if i in top else pre[i] * 0 for i in range(FFN * 2)])
    assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(
        sae.decode(want, x), want @ state["W_dec"].double() + state["b_dec"].double()
    )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _saev_file(p, drop="b_enc"), "missing tensor(s) b_enc"),
        (lambda p: _saev_file(p, schema=7), "schema 7 is not supported"),
        (lambda p: _saev_file(p, cls="Gated"), "activation 'Gated' is not supported"),
        (lambda p: _saev_file(p, exp_factor=3), "its config says d_sae=36"),
        (lambda p: p.write_text("not a checkpoint"), "neither a SAELens folder nor a saev"),
    ],
)
def test_bad_sae_files_get_one_line_naming_them(tmp_path, make, message):
    path = tmp_path / "sae.pt"
    make(path)
    with pytest.raises(InputError, match="sae") as caught:
        load_sae(path, site="ffn")
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_sae_of_the_wrong_width_or_layer_is_refused_in_one_line(tmp_path):
    adapter = from_hf_model(tiny_vit())
    with pytest.raises(
        InputError, match="reads 16 coordinates, but the FFN hidden state of layer 1 has 12"
    ):
        adapter.use_saes({1: _random_sae(HIDDEN, 8, 0, origin={"file": "x"})})
    adapter = from_hf_model(tiny_vit())
    with pytest.raises(InputError, match="layer 9 out of range"):
        adapter.use_saes({9: _random_sae(FFN, 8, 0)})
    save_saelens(_random_sae(FFN, 8, 0), tmp_path / "s", hook="blocks.0.attn.hook_z")
    with pytest.raises(InputError, match="neither the FFN hidden state"):
        load_sae_spec(f"0={tmp_path / 's'}")
    with pytest.raises(InputError, match="expected LAYER=PATH"):
        load_sae_spec("zero")
    save_saelens(_random_sae(FFN, 8, 0), tmp_path / "l2", hook="blocks.2.mlp.hook_post")
    adapter = from_hf_model(tiny_vit())
    with pytest.raises(
        InputError, match="was trained on layer 2 .* not layer 1; give it as 2=PATH"
    ):
        adapter.use_saes(load_sae_spec(f"1={tmp_path / 'l2'}"))


def _train(tmp_path, out, save_every=0.0, **options):
    from conftest import make_image_folder, save_tiny_model
    from neuronpath.experiments.common import Execution
    from neuronpath.experiments.sae_train import SAETrainOptions, run_sae_train

    model = tmp_path / "model"
    if not model.exists():
        save_tiny_model(model)
        make_image_folder(tmp_path / "images")
    settings = {
        "latents": 24,
        "k": 4,
        "epochs": 2,
        "sae_batch": 16,
        "layers": ("0", "2"),
        **options,
    }
    return run_sae_train(
        str(model),
        tmp_path / "images",
        tmp_path / out,
        SAETrainOptions(**settings),
        Execution(device="cpu", batch_size=4, progress=False),
        save_every,
    )


def test_sae_train_resumes_after_an_interruption_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped after its fourth saved batch (in the second epoch), started again, the training
    ends with the weights of a run never stopped, bit for bit; and its files read back."""
    from safetensors.torch import load_file

    import neuronpath.experiments.sae_train as sae_train

    whole = _train(tmp_path, "whole")
    real, saves = sae_train._save_state, []

    def stop_after_four(path, state):
        real(path, state)
        saves.append(state["epoch"])
        if len(saves) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(sae_train, "_save_state", stop_after_four)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "stopped")
    assert (tmp_path / "stopped" / "state.pt").is_file() and saves[-1] == 1
    monkeypatch.setattr(sae_train, "_save_state", real)
    resumed = _train(tmp_path, "stopped")
    # saved at the end of each epoch only, stopped in the middle of the second: the batches
    # after the save are redone
    real_steps, steps = sae_train._steps, []

    def stop_in_second_epoch(*args):
        real_steps(*args)
        steps.append(1)
        if len(steps) == 10:  # 3 image batches x 2 layers per epoch: the 2nd batch of epoch 2
            raise KeyboardInterrupt

    monkeypatch.setattr(sae_train, "_steps", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "lagging", save_every=3600)
    assert torch.load(tmp_path / "lagging" / "state.pt", weights_only=False)["epoch"] == 1
    monkeypatch.setattr(sae_train, "_steps", real_steps)
    _train(tmp_path, "lagging", save_every=3600)
    for layer in ("00", "02"):
        a = load_file(str(tmp_path / "whole" / f"layer{layer}" / "sae_weights.safetensors"))
        for run in ("stopped", "lagging"):
            b = load_file(str(tmp_path / run / f"layer{layer}" / "sae_weights.safetensors"))
            assert all(torch.equal(a[n], b[n]) for n in a), run
    for layer, measured in whole["layers"].items():
        again = resumed["layers"][layer]
        assert {**again, "folder": None} == {**measured, "folder": None}
    saes = load_sae_spec(str(tmp_path / "whole" / "saes.txt"))
    assert sorted(saes) == [0, 2] and saes[0].width == 24 and saes[0].k == 4
    assert not (tmp_path / "whole" / "state.pt").exists()
    report = whole["layers"]["0"]
    assert 0 <= report["dead"] <= 1 and report["fvu"] > 0 and 0 <= report["spliced_accuracy"] <= 1


def test_sae_train_refuses_a_folder_of_another_training(tmp_path):
    from neuronpath.errors import RunConflictError

    _train(tmp_path, "out", epochs=1)
    assert _train(tmp_path, "out", epochs=1)["images"] == 12  # the same: left as it is
    with pytest.raises(RunConflictError, match="holds another SAE training"):
        _train(tmp_path, "out", epochs=1, k=3)


def test_a_latent_run_reads_through_every_command_and_refuses_a_changed_sae(tmp_path):
    """find --units sae with SAELens folders of the FFN (layer 1) and the residual stream
    (layer 2), then evaluate, classes and summary read the run; an SAE file changed since is
    refused in one line."""
    from dataclasses import replace as replaced

    from conftest import make_image_folder, save_tiny_model
    from neuronpath.cli import main
    from neuronpath.errors import RunFormatError
    from neuronpath.experiments.evaluate import run_evaluate

    save_tiny_model(tmp_path / "model")
    make_image_folder(tmp_path / "images", per_class=2)
    saes = _saes()
    save_saelens(saes[1], tmp_path / "ffn", hook="blocks.1.mlp.hook_post")
    save_saelens(saes[2], tmp_path / "resid", hook="blocks.2.hook_resid_post")
    run = tmp_path / "run"
    common = ["--model", str(tmp_path / "model"), "--data", str(tmp_path / "images")]
    spec = f"1={tmp_path / 'ffn'},2={tmp_path / 'resid'}"
    argv = ["-q", "find", *common, "--out", str(run), "--units", "sae", "--sae", spec]
    assert main([*argv, "--methods", "jas,knowledge", "--save-scores", "--steps", "2"]) == 0
    records = [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]
    assert {r["units"] for r in records} == {"sae"}
    assert [e[0] for e in records[0]["path"]] == ["neuron", "latent", "latent"]
    assert main(["-q", "evaluate", str(run), "--ablation", "zero", "--bootstrap", "0"]) == 0
    assert main(["-q", "classes", str(run)]) == 0
    assert main(["-q", "summary", str(run)]) == 0
    changed = replaced(load_sae(tmp_path / "ffn"), b_enc=saes[1].b_enc + 1)
    save_saelens(changed, tmp_path / "ffn", hook="blocks.1.mlp.hook_post")
    with pytest.raises(RunFormatError, match="another SAE at layer 1"):
        run_evaluate(run)
    (tmp_path / "ffn").rename(tmp_path / "moved")
    with pytest.raises(RunFormatError, match="SAE of layer 1 read from .* no longer exists"):
        run_evaluate(run)


def test_a_topk_sae_without_relu_is_not_written_as_a_saelens_one(tmp_path):
    """saev's TopK keeps the k largest pre-activations as they are; a SAELens TopK SAE puts a
    ReLU on them, and the loader would put it back: writing one as the other is refused, not
    done silently."""
    import dataclasses

    from neuronpath.errors import InputError
    from neuronpath.models.sae_files import save_saelens

    sae = dataclasses.replace(_random_sae(FFN, 8, 0), activation="topk", k=2, topk_relu=False)
    with pytest.raises(InputError, match="no ReLU"):
        save_saelens(sae, tmp_path / "s", hook="blocks.1.mlp.hook_post")
    assert not (tmp_path / "s").exists()
