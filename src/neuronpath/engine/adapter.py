"""Model adapters: what the attribution engine needs to know about a model.

An adapter holds the model, one *site* per layer (the module whose output is the FFN hidden
state after the activation function, spec §1), the token policy, how to get logits from
pixels, the model's own preprocessing and its label names.  The engine never touches a
model family directly, so supporting a new family means writing an adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .tokens import TokenPolicy

Preprocess = Callable[["PIL.Image.Image"], torch.Tensor]  # noqa: F821 - PIL image -> (3, H, W)

FFN_NAME_PARTS = ("intermediate", "mlp", "ffn", "feed_forward", "feedforward")
ACTIVATION_NAME_ENDINGS = ("act", "act_fn", "activation", "activation_fn", "intermediate_act_fn")


class ModelAdapter:
    """A model plus the names of its per-layer FFN activation modules.

    Args:
        model: any ``nn.Module`` mapping a pixel batch to logits (or to an object with
            ``.logits``, or a tuple whose first item is the logits).
        site_names: qualified module names, one per layer in depth order, whose *output*
            is that layer's FFN hidden state after the activation, shape (batch, tokens, n).
        token: the token policy (CLS token by default).
        preprocess: the model's own image preprocessing.
        id2label: class index -> label name.
        name: the model's id for manifests.
        distillation_index: the token index of a distillation token, if the model has one.
        input_shape: (channels, height, width) of one input, for probe passes (default: read
            off the preprocessing of a blank image).
        readout: why the token policy is what it is (for manifests).
    """

    def __init__(self, model: nn.Module, site_names: Sequence[str], *,
                 token: TokenPolicy | None = None, preprocess: Preprocess | None = None,
                 id2label: dict[int, str] | None = None, name: str = "custom",
                 forward: Callable[[torch.Tensor], object] | None = None,
                 distillation_index: int | None = None,
                 input_shape: tuple[int, int, int] | None = None, readout: str = ""):
        if not site_names:
            raise ValueError("site_names: expected the names of at least one activation module")
        modules = dict(model.named_modules(remove_duplicate=False))
        missing = [n for n in site_names if n not in modules]
        if missing:
            raise ValueError(f"site_names: no module named {missing[:3]} in the model; "
                             f"expected names from model.named_modules()")
        sites = [modules[n] for n in site_names]
        if len({id(s) for s in sites}) != len(sites):
            raise ValueError("site_names: one module object is used at several layers, so a hook "
                             "on it cannot tell the layers apart; name per-layer modules instead")
        model.eval()
        model.requires_grad_(False)  # attribution needs gradients w.r.t. neurons only
        self.model = model
        self.site_names = list(site_names)
        self._sites = sites
        self.token = token or TokenPolicy.cls()
        self.preprocess = preprocess
        self.id2label = dict(id2label or {})
        self.name = name
        self.distillation_index = distillation_index
        self.input_shape = input_shape
        self.readout = readout
        self.details: dict = {}  # family-specific facts for manifests (e.g. zero-shot classes)
        self._forward = forward or model

    @property
    def num_layers(self) -> int:
        return len(self._sites)

    def site(self, layer: int) -> nn.Module:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for a model with {self.num_layers} layers")
        return self._sites[layer]

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.model.parameters())).dtype

    def to(self, device=None, dtype=None) -> "ModelAdapter":
        self.model.to(device=device, dtype=dtype)
        return self

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self._forward(pixels.to(self.device, self.dtype))
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out

    @contextlib.contextmanager
    def hooks(self, layer_fns: Mapping[int, Callable]) -> Iterator[None]:
        """Register ``layer_fns[l]`` as a forward hook on layer l's site for the duration of the
        context; hooks are always removed, also when the body raises.  Every intervention of
        :mod:`neuronpath.engine.interventions` is built on this."""
        handles = []
        try:
            for layer, fn in layer_fns.items():
                handles.append(self.site(layer).register_forward_hook(fn))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def probe_input(self, rows: int = 2) -> torch.Tensor:
        """Seeded random pixels of the model's input shape, for probe passes."""
        shape = self.input_shape
        if shape is None:
            from PIL import Image

            if self.preprocess is None:
                raise ValueError("input_shape: the adapter has neither an input shape nor a "
                                 "preprocessing to build a probe input")
            shape = tuple(self.preprocess(Image.new("RGB", (32, 32))).shape)
        generator = torch.Generator().manual_seed(0)
        return torch.randn((rows,) + tuple(shape), generator=generator,
                           dtype=torch.float64).to(self.device, self.dtype)

    def widths(self) -> list[int]:
        """FFN width of every layer (hierarchical models differ per stage)."""
        cache = self.__dict__.setdefault("_widths", [])
        if not cache:
            found: dict[int, int] = {}

            def make(layer):
                def hook(module, inputs, output):
                    found[layer] = int(output.shape[-1])
                return hook

            with torch.inference_mode(), self.hooks({l: make(l) for l in range(self.num_layers)}):
                self.logits(self.probe_input(1))
            cache.extend(found[l] for l in range(self.num_layers))
        return list(cache)

    def width(self) -> int:
        """The FFN width n shared by all layers (an error for models whose widths differ)."""
        widths = self.widths()
        if len(set(widths)) > 1:
            raise ValueError(f"width: the layers of {type(self.model).__name__} have different "
                             f"FFN widths ({sorted(set(widths))}); use widths()")
        return widths[0]

    def weights_hash(self) -> str:
        """SHA-256 over the state dict (names, dtypes, shapes and bytes), in name order."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    def describe(self) -> dict:
        return {"id": self.name, "class": type(self.model).__name__,
                "num_layers": self.num_layers, "sites": self.site_names,
                "token": self.token.describe(), "readout": self.readout,
                "num_labels": len(self.id2label), **self.details}


def is_activation(name: str, module: nn.Module) -> bool:
    """A parameter-free leaf module that looks like an activation function."""
    if list(module.children()) or any(True for _ in module.parameters(recurse=False)):
        return False
    cls = type(module)
    if cls.__module__ in ("torch.nn.modules.activation", "transformers.activations"):
        return True
    return name.rsplit(".", 1)[-1].lower() in ACTIVATION_NAME_ENDINGS


def find_ffn_activations(model: nn.Module, num_layers: int | None = None) -> list[str]:
    """Names of the FFN activation modules, one per block, found by inspecting the module tree.

    A site is an activation module inside an FFN-named module of a numbered block (an item of
    a module list), so heads and poolers with an MLP of their own (SigLIP's attention-pooling
    head, timm's ``attn_pool``) are not blocks.  Works across naming schemes (transformers
    4.x ``encoder.layer[i].intermediate.intermediate_act_fn``, 5.x ``layers[i].mlp
    .activation_fn``, Swin ``layers[s].blocks[j].mlp.activation_fn``, timm ``blocks[i].mlp.act``).
    """
    names = []
    for name, module in model.named_modules():
        parts = name.lower().split(".")
        if (is_activation(name, module) and any(p in FFN_NAME_PARTS for p in parts[:-1])
                and any(p.isdigit() for p in parts)):
            names.append(name)
    if not names or (num_layers is not None and len(names) != num_layers):
        raise ValueError(
            f"{type(model).__name__}: could not find one FFN activation module per block: found "
            f"{len(names)} ({names[:4]}{'...' if len(names) > 4 else ''}) for {num_layers} "
            "blocks. Build a ModelAdapter(model, site_names=[...]) naming them explicitly.")
    modules = dict(model.named_modules())
    gated = [n for n in names if any(_is_gate(child) for child, _ in
                                     modules[n.rpartition(".")[0]].named_children())]
    if gated:
        raise ValueError(
            f"{type(model).__name__}: its FFN is gated (SwiGLU-style, e.g. {gated[0]} beside a "
            f"gate projection): the FFN hidden state is act(gate) * up, not the activation "
            f"module's output, so no module holds the neurons; gated FFNs are not supported")
    return names


def _is_gate(name: str) -> bool:
    """A child module that marks a gated FFN (gate_proj, w12 / weights_in of fused SwiGLU)."""
    name = name.lower()
    return "gate" in name or name in ("w12", "weights_in")
