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


def _saev_topk(state, x, k=3):
    """saev's TopK, literally: the k largest pre-activations of x as they are, the rest 0."""
    pre = x @ state["W_enc"].double() + state["b_enc"].double()
    top = sorted(range(len(pre)), key=lambda i: -float(pre[i]))[:k]
    return torch.stack([pre[i] if i in top else pre[i] * 0 for i in range(len(pre))])


def test_a_hand_written_saev_checkpoint_encodes_as_saev_does(tmp_path):
    """saev (schema 2): the encoder reads x as it is and its TopK keeps the k largest
    pre-activations, negative ones too; the decoder adds b_dec."""
    state = _saev_file(tmp_path / "sae.pt")
    sae = load_sae(tmp_path / "sae.pt", site="ffn")
    x = torch.randn(FFN, dtype=torch.float64)
    want = _saev_topk(state, x)
    assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(
        sae.decode(want, x), want @ state["W_dec"].double() + state["b_dec"].double()
    )


def _write_saev(path, header: dict, state: dict) -> None:
    """A saev checkpoint as saev's ``dump`` writes it: a JSON header line, then torch.save."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path.write_bytes((json.dumps(header) + "\n").encode() + buffer.getvalue())


def _saev_tensors(seed=7, width=FFN * 2):
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(FFN, width, generator=g),
        "b_enc": torch.randn(width, generator=g),
        "W_dec": torch.randn(width, FFN, generator=g),
        "b_dec": torch.randn(FFN, generator=g),
    }


def test_a_pre_schema_saev_checkpoint_encodes_as_saev_did(tmp_path):
    """saev's first checkpoints: the header line is the config itself (no schema), the encoder
    a ReLU of W_enc^T (x - b_dec) + b_enc."""
    state = _saev_tensors()
    header = {"d_vit": FFN, "exp_factor": 2, "sparsity_coeff": 4e-4, "ghost_grads": False}
    _write_saev(tmp_path / "old.pt", header, state)
    sae = load_sae(tmp_path / "old.pt", site="ffn")
    x = torch.randn(FFN, dtype=torch.float64)
    pre = (x - state["b_dec"].double()) @ state["W_enc"].double() + state["b_enc"].double()
    want = torch.stack([p if p > 0 else p * 0 for p in pre])
    assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)
    assert 0 < int((want > 0).sum()) < FFN * 2


@pytest.mark.parametrize("theta", [0.4, 0.0])
def test_a_schema_5_batchtopk_checkpoint_encodes_by_its_learned_threshold(tmp_path, theta):
    """saev schema 5 (d_model/d_sae; activations as {"kind", "top_k"}): a BatchTopK SAE runs
    at inference as a threshold on one learned scalar -- a pre-activation is kept where it
    exceeds it, a threshold of 0 or less being a plain ReLU -- not as a TopK per token."""
    state = {**_saev_tensors(8), "activation.threshold": torch.tensor(theta)}
    header = {
        "schema": 5,
        "cfg": {
            "d_model": FFN,
            "d_sae": FFN * 2,
            "activation": {
                "kind": "batch-top-k",
                "top_k": 3,
                "sparsity": {"kind": "no-sparsity"},
                "momentum": 0.1,
            },
            "seed": 0,
        },
        "commit": "unknown",
        "lib": "saev",
    }
    _write_saev(tmp_path / "new.pt", header, state)
    sae = load_sae(tmp_path / "new.pt", site="ffn")
    for x in torch.randn(5, FFN, generator=torch.Generator().manual_seed(3), dtype=torch.float64):
        pre = x @ state["W_enc"].double() + state["b_enc"].double()
        cut = theta if theta > 0 else 0.0
        want = torch.stack([p if p > cut else p * 0 for p in pre])
        assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)
    kept = int((want > 0).sum())
    assert kept != 3  # not a per-token TopK of 3


@pytest.mark.parametrize("schema", [3, 4, 5])
def test_saev_schemas_3_to_5_topk_read_as_saev_reads_them(tmp_path, schema):
    """A TopK without a threshold, its activation written either way saev has written it."""
    state = _saev_tensors(9)
    activation = (
        {"kind": "top-k", "top_k": 3} if schema == 5 else {"cls": "TopK", "params": {"top_k": 3}}
    )
    cfg = {"d_model": FFN, "d_sae": FFN * 2} if schema == 5 else {"d_vit": FFN, "exp_factor": 2}
    _write_saev(
        tmp_path / "s.pt", {"schema": schema, "cfg": {**cfg, "activation": activation}}, state
    )
    sae = load_sae(tmp_path / "s.pt", site="ffn")
    x = torch.randn(FFN, dtype=torch.float64)
    want = _saev_topk(state, x)
    assert torch.allclose(sae.encode(x), want, rtol=1e-10, atol=1e-12)


def test_a_saelens_checkpoint_that_rescales_by_decoder_norm_gives_saelenss_latents(tmp_path):
    """SAELens's TopK with rescale_acts_by_decoder_norm multiplies each pre-activation by its
    decoder row's norm and decodes with the rows divided by it; read here (norms folded) the
    latents and the reconstruction are SAELens's, computed literally."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(11)
    width = 20
    tensors = {
        "W_enc": torch.randn(FFN, width, generator=g),
        "b_enc": torch.randn(width, generator=g) * 0.1,
        "W_dec": torch.randn(width, FFN, generator=g) * torch.rand(width, 1, generator=g) * 5,
        "b_dec": torch.randn(FFN, generator=g) * 0.1,
    }
    folder = tmp_path / "ckpt"
    folder.mkdir()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "topk",
        "d_in": FFN,
        "d_sae": width,
        "k": 4,
        "rescale_acts_by_decoder_norm": True,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.1.mlp.hook_post"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(folder)
    t = {n: v.double() for n, v in tensors.items()}
    norms = [float(torch.sqrt((t["W_dec"][i] ** 2).sum())) for i in range(width)]
    for x in torch.randn(4, FFN, generator=torch.Generator().manual_seed(2), dtype=torch.float64):
        pre = [
            (float(((x - t["b_dec"]) * t["W_enc"][:, i]).sum()) + float(t["b_enc"][i])) * norms[i]
            for i in range(width)
        ]
        top = sorted(range(width), key=lambda i: -pre[i])[:4]
        want = torch.tensor(
            [max(pre[i], 0.0) if i in top else 0.0 for i in range(width)], dtype=torch.float64
        )
        rebuilt = sum(want[i] / norms[i] * t["W_dec"][i] for i in range(width)) + t["b_dec"]
        assert torch.allclose(sae.encode(x), want.double(), rtol=1e-9, atol=1e-10)
        assert torch.allclose(sae.decode(sae.encode(x), x), rebuilt, rtol=1e-9, atol=1e-10)
    assert max(norms) / min(norms) > 2  # the folding matters here


def test_our_folders_are_read_by_saelens_6_rules_with_their_hook_and_model(tmp_path):
    """SAELens (6.x) takes a config's version from ``sae_lens_version`` (top level or under
    ``metadata``) and reads one below 6.0 by its older rules, where ``metadata.hook_name`` is
    lost; the folders sae train writes name a 6.x version, the hook, the model, TopK and k."""
    report = _train(tmp_path, "out", layers=("0",), epochs=1)
    cfg = json.loads((tmp_path / "out" / "layer00" / "cfg.json").read_text())
    version = cfg.get("sae_lens_version") or cfg["metadata"].get("sae_lens_version")
    assert tuple(int(p) for p in version.split(".")[:2]) >= (6, 0)
    assert cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
    assert cfg["metadata"]["model_name"] and "hook_layer" not in cfg["metadata"]
    assert (cfg["architecture"], cfg["k"], cfg["d_in"], cfg["d_sae"]) == ("topk", 4, FFN, 24)
    assert cfg["rescale_acts_by_decoder_norm"] is False and cfg["apply_b_dec_to_input"] is True
    sae = load_sae(tmp_path / "out" / "layer00")
    assert sae.origin["hook"] == "blocks.0.mlp.hook_post" and sae.origin["layer"] == 0
    assert torch.allclose(sae.w_dec.norm(dim=-1), torch.ones(24, dtype=sae.w_dec.dtype), atol=1e-6)
    assert report["layers"]["0"]["latents"] == 24


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _saev_file(p, drop="b_enc"), "missing tensor(s) b_enc"),
        (lambda p: _saev_file(p, schema=7), "schema 7 is not supported"),
        (lambda p: _saev_file(p, schema="x"), "schema 'x' is not supported"),
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


def _train(tmp_path, out, save_every=0.0, save_steps=0, **options):
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
        "sae_batch": 8,
        "buffer": 24,
        "dead_after": 16,
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
        save_steps,
    )


def test_every_step_holds_sae_batch_vectors_from_more_than_one_image_batch(tmp_path, monkeypatch):
    """The shuffle buffer: each step has exactly --sae-batch vectors, and they come from more
    images than one image batch holds (each row traced back to the image it was read from)."""
    import neuronpath.experiments.sae_train as sae_train
    from neuronpath.io.images import image_batches
    from neuronpath.models.loading import load_model
    from neuronpath.models.spec import ModelSpec

    real, steps = sae_train.train_step, []

    def spy(params, optimiser, x, *rest):
        steps.append(x.clone())
        return real(params, optimiser, x, *rest)

    monkeypatch.setattr(sae_train, "train_step", spy)
    report = _train(tmp_path, "out", layers=("0",), sae_batch=16, buffer=32, epochs=1)
    adapter = load_model(ModelSpec(str(tmp_path / "model")), device="cpu")
    held = set(report["held_out"])
    vectors, owner = [], []
    for chunk in image_batches(
        [it for it in _items(tmp_path, adapter) if str(it.id) not in held], adapter.preprocess, 1
    ):
        with torch.no_grad(), record_neurons(adapter, [0], all_tokens=True) as acts:
            adapter.logits(chunk.pixels)
        vectors.append(acts[0][0].float())
        owner += [str(chunk.items[0].id)] * acts[0].shape[1]
    vectors = torch.cat(vectors)
    assert len(steps) == report["trained"]["steps"] >= 2
    for x in steps:
        assert x.shape[0] == 16
        nearest = torch.cdist(x.double(), vectors.double()).min(1)
        assert float(nearest.values.max()) < 1e-5  # every row is a vector of some image
        images = {owner[i] for i in nearest.indices.tolist()}
        assert len(images) > 4, images  # an image batch holds 4 images


def _items(tmp_path, adapter):
    from neuronpath.io.sources import as_data

    return as_data(str(tmp_path / "images")).open(adapter.id2label, "auto").items


def test_sae_train_resumes_after_an_interruption_to_the_same_weights(tmp_path, monkeypatch):
    """Stopped right after its fourth save, or between saves (saved every 3 steps, stopped at
    the 8th), started again, the training ends with the weights of a run never stopped, bit
    for bit, and the same report; its files read back."""
    from safetensors.torch import load_file

    import neuronpath.experiments.sae_train as sae_train

    whole = _train(tmp_path, "whole")
    real, saves = sae_train._save_state, []

    def stop_after_four(path, state):
        real(path, state)
        saves.append(state["step"])
        if len(saves) == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(sae_train, "_save_state", stop_after_four)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "stopped")
    assert (tmp_path / "stopped" / "state.pt").is_file() and saves == [1, 2, 3, 4]
    monkeypatch.setattr(sae_train, "_save_state", real)
    resumed = _train(tmp_path, "stopped")
    real_step, calls = sae_train.train_step, []

    def stop_at_the_eighth_step(*args):
        calls.append(1)
        if len(calls) == 2 * 8 - 1:  # two layers a step: the first layer of step 8
            raise KeyboardInterrupt
        return real_step(*args)

    monkeypatch.setattr(sae_train, "train_step", stop_at_the_eighth_step)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "lagging", save_every=3600, save_steps=3)
    assert torch.load(tmp_path / "lagging" / "state.pt", weights_only=False)["step"] == 6
    monkeypatch.setattr(sae_train, "train_step", real_step)
    lagging = _train(tmp_path, "lagging", save_every=3600, save_steps=3)
    assert whole["trained"]["steps"] > 8
    for layer in ("00", "02"):
        a = load_file(str(tmp_path / "whole" / f"layer{layer}" / "sae_weights.safetensors"))
        for run in ("stopped", "lagging"):
            b = load_file(str(tmp_path / run / f"layer{layer}" / "sae_weights.safetensors"))
            assert all(torch.equal(a[n], b[n]) for n in a), run
    for again in (resumed, lagging):
        for layer, measured in whole["layers"].items():
            assert {**again["layers"][layer], "folder": None} == {**measured, "folder": None}
        assert again["trained"] == whole["trained"]
    saes = load_sae_spec(str(tmp_path / "whole" / "saes.txt"))
    assert sorted(saes) == [0, 2] and saes[0].width == 24 and saes[0].k == 4
    assert not (tmp_path / "whole" / "state.pt").exists()


def test_sae_quality_is_measured_with_the_final_weights_on_the_held_out_images(tmp_path):
    """FVU (centred on the mean of all held-out vectors), L0, dead and dense latents at every
    token and at the read position (CLS), recomputed here vector by vector with plain hooks
    from the written SAE folder, equal the report's."""
    from neuronpath.models.loading import load_model
    from neuronpath.models.spec import ModelSpec

    report = _train(tmp_path, "out", layers=("1",), held_out=0.25, epochs=3)
    sae = load_sae(tmp_path / "out" / "layer01")
    adapter = load_model(ModelSpec(str(tmp_path / "model")), device="cpu")
    model = adapter.model
    held = [it for it in _items(tmp_path, adapter) if str(it.id) in set(report["held_out"])]
    assert len(held) == report["images"] == 3
    rows = []
    for item in held:
        from neuronpath.io.images import image_batches

        pixels = next(iter(image_batches([item], adapter.preprocess, 1))).pixels
        found = {}
        hook = literal.sites(model)[1].register_forward_hook(
            lambda m, i, o: found.__setitem__("h", o[0].detach().clone())
        )
        try:
            with torch.no_grad():
                model(pixel_values=pixels)
        finally:
            hook.remove()
        rows.append(found["h"].double())

    def plain(vectors):
        n = len(vectors)
        mean = [sum(float(v[j]) for v in vectors) / n for j in range(sae.d_in)]
        error = variance = 0.0
        fires = [0] * sae.width
        active = 0
        for v in vectors:
            f = plain_encode(sae, v)
            rebuilt = sum(float(f[i]) * sae.w_dec[i] for i in range(sae.width)) + sae.b_dec
            error += sum((float(v[j]) - float(rebuilt[j])) ** 2 for j in range(sae.d_in))
            variance += sum((float(v[j]) - mean[j]) ** 2 for j in range(sae.d_in))
            for i in range(sae.width):
                if f[i] > 0:
                    fires[i] += 1
                    active += 1
        dead = sum(c == 0 for c in fires) / sae.width
        dense = sum(c > 0.1 * n for c in fires) / sae.width
        return error / variance, active / n, dead, dense

    every = [v for r in rows for v in r]
    cls = [r[0] for r in rows]
    fvu_all, l0_all, dead, dense = plain(every)
    fvu_read, l0_read, _, _ = plain(cls)
    measured = report["layers"]["1"]
    assert measured["fvu_all"] == pytest.approx(fvu_all, rel=1e-4)
    assert measured["fvu_read"] == pytest.approx(fvu_read, rel=1e-4)
    assert measured["l0_all"] == pytest.approx(l0_all) and measured["l0_read"] == pytest.approx(
        l0_read
    )
    assert measured["dead"] == pytest.approx(dead) and measured["dense"] == pytest.approx(dense)
    assert 0 < dead < 1 or 0 < dense  # a statistic that can fail on this SAE


def test_sae_train_refuses_a_folder_of_another_training(tmp_path):
    from neuronpath.errors import RunConflictError

    _train(tmp_path, "out", epochs=1)
    assert _train(tmp_path, "out", epochs=1)["trained"]["images"] == 11  # the same: left as is
    with pytest.raises(RunConflictError, match="holds another SAE training"):
        _train(tmp_path, "out", epochs=1, k=3)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    del report["trained"]  # as an earlier neuronpath wrote it
    (tmp_path / "out" / "report.json").write_text(json.dumps(report))
    with pytest.raises(RunConflictError, match="SAE training of an earlier neuronpath"):
        _train(tmp_path, "out", epochs=1)


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


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--sae-batch", "4096", "--buffer", "1024"], "--sae-batch: expected at most --buffer"),
        (["--held-out", "1"], "--held-out: expected a share from 0"),
        (["--warmup", "0.9", "--decay", "0.2"], "--warmup + --decay: expected at most 1"),
        (["--aux-coef", "-1"], "--aux-coef: expected a finite weight >= 0"),
        (["--save-steps", "-2"], "--save-steps: expected steps >= 0"),
    ],
)
def test_bad_training_options_are_one_line_before_any_work(tmp_path, capsys, extra, message):
    from neuronpath.cli import main

    out = tmp_path / "out"
    argv = ["sae", "train", "--model", "M", "--data", "D", "--out", str(out), *extra]
    assert main(argv) == 2  # the model M does not exist: refused before it is read
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()
