"""Sparse autoencoders from the files researchers share, read without their libraries.

* **SAELens layout**: a folder with ``cfg.json`` and ``sae_weights.safetensors`` holding
  ``W_enc`` (d_in, width), ``b_enc``, ``W_dec`` (width, d_in), ``b_dec`` and, for JumpReLU,
  ``threshold`` (or ``log_threshold``).  The config names the encoder (``architecture``
  standard/topk/jumprelu, or the older ``activation_fn_str`` relu/topk with
  ``activation_fn_kwargs.k``), ``apply_b_dec_to_input``, ``normalize_activations``
  (none/constant_norm_rescale/layer_norm; ``expected_average_only_in`` needs a scaling factor
  the file does not hold, so it is refused), ``rescale_acts_by_decoder_norm`` (SAELens's
  training checkpoints: the decoder norms are folded into the encoder, as SAELens folds them)
  and the hook it was trained on (``hook_name``/``hook_point``, also under
  ``metadata``/``meta``): TransformerLens's ``blocks.L.mlp.hook_post`` is the FFN hidden state
  (neuronpath's neuron site) and ``blocks.L.hook_resid_post`` the residual stream after block L.
  ``neuronpath sae train`` writes this layout as SAELens 6 does (``metadata.sae_lens_version``,
  ``hook_name``, ``model_name``).  ViT-Prisma's own format (a pickled ``.pt`` beside its
  ``config.json``) is not read.
* **saev checkpoints**: one JSON header line followed by a ``torch.save``d state dict of the
  same four tensors.  The header is the config itself in saev's first checkpoints (no
  ``schema``: a ReLU encoder that subtracts b_dec) and ``{"schema": 1..5, "cfg": {...}}``
  since (``d_vit``/``exp_factor`` or ``d_model``/``d_sae``; the activation as ``{"cls",
  "params": {"top_k"}}`` or ``{"kind", "top_k"}``; an encoder that reads x as it is).  saev's
  TopK keeps the k largest pre-activations without a ReLU; a BatchTopK SAE is read as saev
  runs it at inference -- by its learned threshold (the state dict's ``activation.threshold``:
  a pre-activation is kept where it exceeds it) where the file holds one, per token as a TopK
  where it does not.  saev normalises activations in its data pipeline, not in the checkpoint:
  neuronpath feeds the site's activations as they are, so an SAE trained on normalised
  activations needs them folded into its weights first.

Anything else -- a missing tensor, a width that does not match the site, an unknown encoder --
is one :class:`~neuronpath.errors.InputError` line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path

import torch

from ..engine.sae import NORMALISATIONS, SAE_SITES, SparseAutoencoder
from ..errors import InputError, option

CFG_NAME, WEIGHTS_NAME = "cfg.json", "sae_weights.safetensors"
TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")
HOOK_SITES = ((r"mlp\.hook_post$", "ffn"), (r"hook_resid_post$", "resid"))


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def load_sae(path: str | Path, site: str | None = None) -> SparseAutoencoder:
    """The SAE at ``path`` (a SAELens folder, its ``cfg.json`` or weights file, or a saev
    checkpoint); ``site`` ("ffn" or "resid") overrides or supplies what the file says."""
    path = Path(path).expanduser()
    if site is not None and site not in SAE_SITES:
        raise InputError(
            f"{option('sae_site')}: expected one of {', '.join(SAE_SITES)}, got {site!r}"
        )
    if path.is_file() and path.name in (CFG_NAME, WEIGHTS_NAME):
        path = path.parent
    if not path.exists():
        raise InputError(
            f"{option('sae')}: {path} does not exist; expected a SAELens folder or a saev file"
        )
    sae = _saelens(path, site) if path.is_dir() else _saev(path, site)
    latents = sae.w_dec.shape[0]
    if sae.k is not None and sae.k > latents:  # refused at load, not at the first batch
        raise _bad(path, f"its k ({sae.k}) exceeds its {latents} latents")
    return sae


def load_sae_spec(spec: str, site: str | None = None) -> dict[int, SparseAutoencoder]:
    """``{layer: SAE}`` from ``LAYER=PATH[,LAYER=PATH...]`` or a file of lines ``LAYER PATH``
    (``#`` starts a comment); relative paths in a file are relative to the file."""
    listing = Path(spec).expanduser()
    if "=" not in spec and listing.is_file():
        pairs, base = [], listing.parent
        for number, line in enumerate(listing.read_text().splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if line:
                fields = line.split(None, 1)
                if len(fields) != 2:
                    raise InputError(
                        f"{option('sae')}: {listing} line {number}: expected 'LAYER PATH', "
                        f"got {line!r}"
                    )
                pairs.append((fields[0], fields[1]))
        if not pairs:  # a file of comments only: a neuron search labelled sae otherwise
            raise InputError(
                f"{option('sae')}: {listing} names no SAE; expected lines 'LAYER PATH'"
            )
    else:
        base = Path.cwd()
        pairs = [tuple(part.split("=", 1)) for part in spec.split(",") if part.strip()]
        if not pairs or any(len(p) != 2 for p in pairs):
            raise InputError(
                f"{option('sae')}: expected LAYER=PATH[,LAYER=PATH...] or a file of lines "
                f"'LAYER PATH', got {spec!r}"
            )
    saes: dict[int, SparseAutoencoder] = {}
    for layer, path in pairs:
        if not layer.strip().isdigit():
            raise InputError(f"{option('sae')}: expected a layer number (from 0), got {layer!r}")
        if int(layer) in saes:
            raise InputError(f"{option('sae')}: layer {int(layer)} is given twice")
        saes[int(layer)] = load_sae(base / Path(path.strip()).expanduser(), site)
    return saes


def _bad(path, what: str) -> InputError:
    return InputError(f"{option('sae')}: {path}: {what}")


def _hook_of(cfg: dict) -> tuple[str | None, int | None]:
    scopes = [cfg, cfg.get("metadata") or {}, cfg.get("meta") or {}]
    hook = next((s[k] for s in scopes for k in ("hook_name", "hook_point") if s.get(k)), None)
    layer = next(
        (s[k] for s in scopes for k in ("hook_layer", "hook_point_layer") if s.get(k) is not None),
        None,
    )
    if layer is None and hook is not None:
        found = re.search(r"blocks\.(\d+)\.", hook)
        layer = int(found.group(1)) if found else None
    return hook, layer


def _site_of(path, hook: str | None, site: str | None) -> str:
    if site is not None:
        return site
    for pattern, name in HOOK_SITES:
        if hook is not None and re.search(pattern, hook):
            return name
    raise _bad(
        path,
        f"trained on hook {hook!r}, which is neither the FFN hidden state (blocks.L.mlp.hook_post) "
        "nor the residual stream after a block (blocks.L.hook_resid_post); pass "
        f"{option('sae_site')} ffn|resid if it reads one of them under another name",
    )


def _checked(path, tensors: dict, cfg_width: int | None, cfg_d_in: int | None) -> dict:
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise _bad(path, f"missing tensor(s) {', '.join(missing)}; expected {', '.join(TENSORS)}")
    w_enc, b_enc, w_dec, b_dec = (tensors[n] for n in TENSORS)
    d_in, width = w_enc.shape if w_enc.dim() == 2 else (None, None)
    shapes_ok = (
        w_enc.dim() == 2
        and tuple(w_dec.shape) == (width, d_in)
        and tuple(b_enc.shape) == (width,)
        and tuple(b_dec.shape) == (d_in,)
    )
    if not shapes_ok:
        raise _bad(
            path,
            f"inconsistent shapes W_enc {tuple(w_enc.shape)}, b_enc {tuple(b_enc.shape)}, "
            f"W_dec {tuple(w_dec.shape)}, b_dec {tuple(b_dec.shape)}; expected (d_in, width), "
            "(width,), (width, d_in), (d_in,)",
        )
    if (cfg_width, cfg_d_in) != (None, None) and (cfg_width, cfg_d_in) != (width, d_in):
        raise _bad(
            path,
            f"its config says d_sae={cfg_width}, d_in={cfg_d_in}, its weights width={width}, "
            f"d_in={d_in}",
        )
    return {"w_enc": w_enc, "b_enc": b_enc, "w_dec": w_dec, "b_dec": b_dec}


def _saelens(folder: Path, site: str | None) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights_path = folder / CFG_NAME, folder / WEIGHTS_NAME
    for needed in (cfg_path, weights_path):
        if not needed.is_file():
            raise _bad(
                folder, f"no {needed.name}; expected a SAELens folder ({CFG_NAME} + {WEIGHTS_NAME})"
            )
    try:
        cfg = json.loads(cfg_path.read_text())
        tensors = load_file(str(weights_path))
    except (ValueError, OSError, SafetensorError) as error:
        raise _bad(folder, f"cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(cfg, dict):
        raise _bad(cfg_path, "expected a JSON object")
    arch = cfg.get("architecture") or {"relu": "standard"}.get(
        cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu",
        cfg.get("activation_fn_str") or cfg.get("activation_fn"),
    )
    activation = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if activation is None:
        raise _bad(
            cfg_path,
            f"encoder {arch!r} is not supported; expected standard (ReLU), topk or jumprelu",
        )
    k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
    if activation == "topk" and (not isinstance(k, int) or k < 1):
        raise _bad(cfg_path, f"a topk encoder needs a positive integer k, got {k!r}")
    normalize = cfg.get("normalize_activations") or "none"
    if normalize not in NORMALISATIONS:
        raise _bad(
            cfg_path,
            f"normalize_activations {normalize!r} is not supported (expected_average_only_in needs "
            "a scaling factor the file does not hold: fold it into the weights first); expected "
            f"one of {', '.join(NORMALISATIONS)}",
        )
    weights = _checked(weights_path, tensors, cfg.get("d_sae"), cfg.get("d_in"))
    threshold = None
    if activation == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"]
        elif "log_threshold" in tensors:
            threshold = tensors["log_threshold"].exp()
        else:
            raise _bad(
                weights_path, "a jumprelu encoder needs a threshold (or log_threshold) tensor"
            )
    weights = {n: t.double() for n, t in weights.items()}
    if cfg.get("rescale_acts_by_decoder_norm"):
        if activation == "jumprelu":
            raise _bad(
                cfg_path,
                "a jumprelu SAE with rescale_acts_by_decoder_norm is not supported (where its "
                "threshold applies is not fixed); fold the decoder norms into it first",
            )
        weights = _fold_decoder_norms(weights)
    hook, layer = _hook_of(cfg)
    return SparseAutoencoder(
        **weights,
        activation=activation,
        k=k if activation == "topk" else None,
        threshold=None if threshold is None else threshold.double(),
        topk_relu=True,
        subtract_b_dec=bool(cfg.get("apply_b_dec_to_input", True)),
        normalize=normalize,
        site=_site_of(cfg_path, hook, site),
        origin={
            "format": "saelens",
            "file": str(folder.resolve()),
            "hook": hook,
            "layer": layer,
            "sha256": _digest(weights_path),
        },
    )


def _fold_decoder_norms(weights: dict) -> dict:
    """A SAELens SAE with ``rescale_acts_by_decoder_norm`` multiplies each pre-activation by
    its decoder row's norm n_i and decodes with the rows divided by it; the same latents come
    from W_enc n, b_enc n and W_dec / n (the norms folded, as SAELens folds them)."""
    norms = weights["w_dec"].norm(dim=-1)
    return {
        **weights,
        "w_enc": weights["w_enc"] * norms,
        "b_enc": weights["b_enc"] * norms,
        "w_dec": weights["w_dec"] / norms[:, None],
    }


SAEV_ACTIVATIONS = {
    "Relu": "relu",
    "TopK": "topk",
    "BatchTopK": "batchtopk",
    "relu": "relu",
    "top-k": "topk",
    "batch-top-k": "batchtopk",
}


def _saev_settings(path, header: dict) -> tuple[dict, str, int | None, bool]:
    """(cfg, activation, k, subtract b_dec) of a saev header, by its schema: none (the first
    checkpoints: the header is the config; ReLU, b_dec subtracted in the encoder), 1 (the
    activation named by ``cls``, or a dict under ``cfg``), 2 (``{"cls", "params"}``), 3 to 5
    (``{"kind", "top_k"}`` or ``{"cls", "params"}``; ``d_model``/``d_sae``)."""
    schema = header.get("schema")
    if schema is None:
        return header, "relu", None, True
    if schema not in (1, 2, 3, 4, 5):
        raise _bad(path, f"saev checkpoint schema {schema!r} is not supported; expected 1 to 5")
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise _bad(path, f"its saev header (schema {schema}) has no cfg object")
    act = cfg.get("activation")
    if schema == 1 and header.get("cls") in ("Relu", "TopK", "BatchTopK"):
        name, params = header["cls"], {"top_k": cfg.get("top_k", 32)}
    elif isinstance(act, dict):
        name = act.get("cls", act.get("kind"))
        params = act.get("params", act) or {}
    else:
        name, params = "Relu", {}
    activation = SAEV_ACTIVATIONS.get(name)
    if activation is None:
        raise _bad(
            path, f"saev activation {name!r} is not supported; expected Relu, TopK or BatchTopK"
        )
    k = params.get("top_k")
    if activation != "relu" and (not isinstance(k, int) or k < 1):
        raise _bad(path, f"a TopK encoder needs a positive integer top_k, got {k!r}")
    return cfg, activation, k, False


def _saev(path: Path, site: str | None) -> SparseAutoencoder:
    """A saev checkpoint (module docstring): a JSON header line, then a torch state dict."""
    try:
        with open(path, "rb") as handle:
            header = json.loads(handle.readline())
            state = torch.load(io.BytesIO(handle.read()), weights_only=True, map_location="cpu")
    except (ValueError, OSError, EOFError, RuntimeError) as error:
        raise _bad(
            path,
            f"is neither a SAELens folder nor a saev checkpoint (a JSON header line, then a torch "
            f"state dict): {type(error).__name__}: {error}",
        ) from None
    if not isinstance(header, dict) or not isinstance(state, dict):
        raise _bad(path, "expected a saev header object and a state dict")
    cfg, activation, k, subtract = _saev_settings(path, header)
    d_in = cfg.get("d_vit", cfg.get("d_model"))
    width = cfg.get("d_sae") or (
        d_in * cfg["exp_factor"] if d_in and cfg.get("exp_factor") else None
    )
    weights = _checked(path, state, width, d_in if width else None)
    threshold = None
    if activation == "batchtopk":
        # saev applies a BatchTopK at inference as one learned threshold (schema 5: the
        # activation's ``threshold`` buffer, theta <= 0 meaning a plain ReLU); older files hold
        # none, and their BatchTopK is a TopK per token at inference
        found = [v for name, v in state.items() if name.endswith("threshold")]
        if found:
            theta = found[0].double().reshape(-1)
            if theta.numel() != 1:
                raise _bad(path, f"expected one BatchTopK threshold, got {theta.numel()} values")
            threshold = theta.expand(weights["w_enc"].shape[1]).clone()
            activation = "jumprelu"
        else:
            activation = "topk"
    if site is None:
        raise _bad(
            path,
            "a saev checkpoint does not say which site it reads; pass "
            f"{option('sae_site')} ffn|resid",
        )
    return SparseAutoencoder(
        **{n: t.double() for n, t in weights.items()},
        activation=activation,
        k=k if activation == "topk" else None,
        threshold=threshold,
        topk_relu=False,
        subtract_b_dec=subtract,
        site=site,
        origin={
            "format": "saev",
            "schema": header.get("schema"),
            "file": str(path.resolve()),
            "sha256": _digest(path),
        },
    )


SAELENS_LAYOUT = "6.0.0"  # the SAELens version whose cfg.json layout save_saelens writes


def save_saelens(
    sae: SparseAutoencoder,
    folder: str | Path,
    hook: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Write ``sae`` in the SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) as
    SAELens 6 writes it -- ``metadata`` with ``sae_lens_version`` (so SAELens reads it by its
    6.x rules, not as an older file), ``hook_name`` and ``model_name`` -- which :func:`load_sae`
    and SAELens itself read; ``hook``: the TransformerLens-style hook name of its site
    (``blocks.L.mlp.hook_post`` or ``blocks.L.hook_resid_post``)."""
    from safetensors.torch import save_file

    if sae.activation == "topk" and not sae.topk_relu:
        raise InputError(
            f"{folder}: this SAE keeps its k largest pre-activations as they are (saev's TopK, "
            "no ReLU), and a SAELens TopK SAE puts a ReLU on them; it cannot be written as one "
            "without changing its latents"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "W_enc": sae.w_enc,
        "b_enc": sae.b_enc,
        "W_dec": sae.w_dec,
        "b_dec": sae.b_dec,
        **({"threshold": sae.threshold} if sae.threshold is not None else {}),
    }
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()},
        str(folder / WEIGHTS_NAME),
    )
    architecture = {"relu": "standard"}.get(sae.activation, sae.activation)
    cfg = {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": sae.subtract_b_dec,
        "normalize_activations": sae.normalize,
        "reshape_activations": "none",
        **({"k": sae.k, "rescale_acts_by_decoder_norm": False} if sae.activation == "topk" else {}),
        "metadata": {
            "sae_lens_version": SAELENS_LAYOUT,
            "sae_lens_training_version": SAELENS_LAYOUT,
            "model_name": model_name,
            "hook_name": hook,
            "hook_head_index": None,
        },
    }
    (folder / CFG_NAME).write_text(json.dumps(cfg, indent=2) + "\n")
    return folder
