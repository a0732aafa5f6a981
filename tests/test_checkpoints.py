"""The paper's checkpoint formats: a Google ViT .npz and an MAE .pth written by the test from a
tiny model load back to identical logits (also with a resized position grid)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import tiny_global_pool, tiny_vit
from neuronpath.errors import CheckpointError, ModelLoadError
from neuronpath.models.checkpoints import load_google_npz, load_mae_pth, resize_position_grid
from neuronpath.models.loading import load_model


def write_google_npz(model, path):
    """Write a HF ViT in the key layout of Google's ViT-B_16-224.npz (test-side inverse)."""
    sd = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    hidden = model.config.hidden_size
    heads = model.config.num_attention_heads
    w = {
        "cls": sd["vit.embeddings.cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["vit.embeddings.position_embeddings"],
        "embedding/kernel": sd["vit.embeddings.patch_embeddings.projection.weight"].transpose(
            2, 3, 1, 0
        ),
        "embedding/bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "Transformer/encoder_norm/scale": sd["vit.layernorm.weight"],
        "Transformer/encoder_norm/bias": sd["vit.layernorm.bias"],
        "head/kernel": sd["classifier.weight"].T,
        "head/bias": sd["classifier.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        src, dst = f"vit.layers.{i}", f"Transformer/encoderblock_{i}"
        att = f"{dst}/MultiHeadDotProductAttention_1"
        for hf, g in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
            w[f"{att}/{g}/kernel"] = sd[f"{src}.attention.{hf}.weight"].T.reshape(hidden, heads, -1)
            w[f"{att}/{g}/bias"] = sd[f"{src}.attention.{hf}.bias"].reshape(heads, -1)
        w[f"{att}/out/kernel"] = sd[f"{src}.attention.o_proj.weight"].T.reshape(heads, -1, hidden)
        w[f"{att}/out/bias"] = sd[f"{src}.attention.o_proj.bias"]
        w[f"{dst}/MlpBlock_3/Dense_0/kernel"] = sd[f"{src}.mlp.fc1.weight"].T
        w[f"{dst}/MlpBlock_3/Dense_0/bias"] = sd[f"{src}.mlp.fc1.bias"]
        w[f"{dst}/MlpBlock_3/Dense_1/kernel"] = sd[f"{src}.mlp.fc2.weight"].T
        w[f"{dst}/MlpBlock_3/Dense_1/bias"] = sd[f"{src}.mlp.fc2.bias"]
        for ln, hf in (("LayerNorm_0", "layernorm_before"), ("LayerNorm_2", "layernorm_after")):
            w[f"{dst}/{ln}/scale"] = sd[f"{src}.{hf}.weight"]
            w[f"{dst}/{ln}/bias"] = sd[f"{src}.{hf}.bias"]
    np.savez(path, **w)


def write_mae_pth(model, path):
    """Write a GlobalPoolViT in MAE's timm key layout, under 'model' (test-side inverse)."""
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    t = {
        "cls_token": sd["vit.embeddings.cls_token"],
        "pos_embed": sd["vit.embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["vit.embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["vit.embeddings.patch_embeddings.projection.bias"],
        "fc_norm.weight": sd["fc_norm.weight"],
        "fc_norm.bias": sd["fc_norm.bias"],
        "head.weight": sd["head.weight"],
        "head.bias": sd["head.bias"],
    }
    for i in range(model.config.num_hidden_layers):
        src, dst = f"vit.layers.{i}", f"blocks.{i}"
        t[f"{dst}.attn.qkv.weight"] = torch.cat(
            [sd[f"{src}.attention.{p}_proj.weight"] for p in "qkv"]
        )
        t[f"{dst}.attn.qkv.bias"] = torch.cat([sd[f"{src}.attention.{p}_proj.bias"] for p in "qkv"])
        for a, b in (
            ("attn.proj", "attention.o_proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
        ):
            t[f"{dst}.{a}.weight"] = sd[f"{src}.{b}.weight"]
            t[f"{dst}.{a}.bias"] = sd[f"{src}.{b}.bias"]
    torch.save({"model": t, "epoch": 99}, path)


def _google_like_vit(image=8):
    model = tiny_vit(layers=2, hidden=16, ffn=24, labels=7, image=image, dtype=torch.float32)
    model.config.layer_norm_eps = 1e-6
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = 1e-6
    return model


def test_google_npz_round_trip_gives_identical_logits(tmp_path):
    model = _google_like_vit()
    write_google_npz(model, tmp_path / "ViT-T.npz")
    loaded = load_google_npz(tmp_path / "ViT-T.npz", image_size=8)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=x).logits, model(pixel_values=x).logits, rtol=1e-5, atol=1e-6
        )
    assert loaded.config.num_attention_heads == 2 and loaded.config.intermediate_size == 24


def test_google_npz_with_resized_grid_matches_scipy_zoom(tmp_path):
    model = _google_like_vit(image=16)  # 4x4 grid, run at 8 px (2x2), like B/32 at 224
    write_google_npz(model, tmp_path / "ViT-T.npz")
    loaded = load_google_npz(tmp_path / "ViT-T.npz", image_size=8)
    pos = model.vit.embeddings.position_embeddings.detach().double().numpy()
    grid = pos[0, 1:].reshape(4, 4, -1)
    zoomed = ndimage.zoom(grid, (2 / 4, 2 / 4, 1), order=1).reshape(1, 4, -1)  # the official code
    expected_pos = np.concatenate([pos[:, :1], zoomed], axis=1)
    torch.testing.assert_close(
        loaded.vit.embeddings.position_embeddings.detach().double(),
        torch.from_numpy(expected_pos),
        rtol=1e-6,
        atol=1e-6,
    )
    # a reference model at 8 px carrying the zoomed grid gives the same logits
    reference = _google_like_vit(image=8)
    state = {k: v for k, v in model.state_dict().items() if "position_embeddings" not in k}
    reference.load_state_dict(state, strict=False)
    with torch.no_grad():
        reference.vit.embeddings.position_embeddings.copy_(torch.from_numpy(expected_pos).float())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=x).logits, reference(pixel_values=x).logits, rtol=1e-5, atol=1e-6
        )


def test_resize_is_bilinear_upsampling_too():
    pos = torch.randn(1, 1 + 9, 4, dtype=torch.float64)
    up = resize_position_grid(pos, 1, 5)
    expected = ndimage.zoom(pos[0, 1:].reshape(3, 3, 4).numpy(), (5 / 3, 5 / 3, 1), order=1)
    torch.testing.assert_close(up[0, 1:], torch.from_numpy(expected.reshape(25, 4)))
    torch.testing.assert_close(up[:, :1], pos[:, :1])


@pytest.mark.parametrize("twice", [False, True])
def test_mae_pth_round_trip_gives_identical_logits(tmp_path, twice):
    model = tiny_global_pool(layers=2, fc_norm_twice=twice, dtype=torch.float32)
    write_mae_pth(model, tmp_path / "mae.pth")
    loaded = load_mae_pth(tmp_path / "mae.pth", image_size=8, fc_norm_twice=twice, num_heads=2)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(pixel_values=x), model(pixel_values=x), rtol=1e-5, atol=1e-6
        )
        other = load_mae_pth(
            tmp_path / "mae.pth", image_size=8, fc_norm_twice=not twice, num_heads=2
        )
        assert not torch.allclose(other(pixel_values=x), model(pixel_values=x))


def test_checkpoints_through_load_model(tmp_path):
    write_google_npz(_google_like_vit(), tmp_path / "vit.npz")
    adapter = load_model(str(tmp_path / "vit.npz"), image_size=8)
    assert adapter.token.name == "cls" and adapter.num_layers == 2
    assert adapter.preprocess.mean == (0.5, 0.5, 0.5) and adapter.preprocess.resize == (8, 8)
    official = load_model(str(tmp_path / "vit.npz"), image_size=8, preprocess="official")
    assert official.preprocess.mean == (0.485, 0.456, 0.406)
    write_mae_pth(tiny_global_pool(layers=2, dtype=torch.float32), tmp_path / "mae.pth")
    with pytest.raises(ModelLoadError, match="heads"):
        load_model(str(tmp_path / "mae.pth"), image_size=8)  # width 16 has no 64-wide heads


def test_bad_checkpoint_files_are_explained(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a readable .npz"):
        load_model(str(tmp_path / "empty.npz"))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a Google ViT checkpoint"):
        load_google_npz(tmp_path / "other.npz")
    torch.save({"model": {"x": torch.zeros(1)}}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="not an MAE fine-tuned checkpoint"):
        load_model(str(tmp_path / "other.pth"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelLoadError, match="not a .npz"):
        load_model(str(tmp_path / "notes.txt"))
    write_google_npz(_google_like_vit(), tmp_path / "vit.npz")
    with pytest.raises(ModelLoadError, match="multiple of the patch size"):
        load_model(str(tmp_path / "vit.npz"), image_size=10)
