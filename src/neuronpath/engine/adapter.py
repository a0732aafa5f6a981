"""Model adapters: what the attribution engine needs to know about a model.

An adapter holds the model, one *site* per block (where its FFN hidden state can be read and
edited, :mod:`neuronpath.engine.sites`), every block's token policy (checked by a gradient
probe, :mod:`neuronpath.engine.readout`) and token layout (:mod:`neuronpath.engine.layout`), how
to get logits from pixels, the model's own preprocessing and its label names.  The engine
never touches a model family directly, so supporting a new family means writing an adapter.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError
from .layout import TokenLayout
from .readout import Readout, probe, settle_readout
from .tokens import TokenPolicy

Preprocess = Callable[["PIL.Image.Image"], torch.Tensor]  # noqa: F821 - PIL image -> (3, H, W)


class ModelAdapter:
    """A model plus, for every block, the site of its FFN neurons and where they are read.

    Args:
        model: any ``nn.Module`` mapping a pixel batch to logits (or to an object with
            ``.logits``, or a tuple whose first item is the logits).
        site_names: qualified module names, one per block in depth order, whose *output* is
            that block's FFN hidden state, shape (batch, tokens, n) (the activation module of a
            plain FFN).
        ffn_inputs: or: names of modules whose *input* is the hidden state (each block's FFN
            output projection, which also covers gated FFNs; what the family adapters use, see
            :mod:`neuronpath.engine.sites`).
        token: the token policy of the last stage (default: where the head reads, found by the
            gradient probe of :mod:`neuronpath.engine.readout`; a given policy is checked
            against the probe when the adapter can build a probe input).
        family_readout: what a family table says the head reads, ``(policy, reason)``; it
            names the probe's finding where they agree (a disagreement is logged).
        preprocess: the model's own image preprocessing.
        id2label: class index -> label name.
        name: the model's id for manifests.
        distillation_index: the token index of a distillation token, if the model has one.
        input_shape: (channels, height, width) of one input, for probe passes (default: read
            off the preprocessing of a blank image).
        layout: ``layout(block, tokens) -> TokenLayout``: where each block's tokens sit in the
            image (default: not stated, so no maps).
    """

    def __init__(
        self,
        model: nn.Module,
        site_names: Sequence[str] | None = None,
        *,
        ffn_inputs: Sequence[str] | None = None,
        token: TokenPolicy | str | None = None,
        family_readout: tuple[TokenPolicy, str] | None = None,
        preprocess: Preprocess | None = None,
        id2label: dict[int, str] | None = None,
        name: str = "custom",
        forward: Callable[[torch.Tensor], object] | None = None,
        distillation_index: int | None = None,
        input_shape: tuple[int, int, int] | None = None,
        layout: Callable[[int, int], TokenLayout] | None = None,
    ):
        if (site_names is None) == (ffn_inputs is None):
            raise InputError(
                "ModelAdapter: name the FFN sites either by the modules whose output "
                "is the hidden state (site_names) or by those whose input it is "
                "(ffn_inputs)"
            )
        names = list(site_names if site_names is not None else ffn_inputs)
        if not names:
            raise InputError("site_names: expected the names of at least one module per block")
        modules = dict(model.named_modules(remove_duplicate=False))
        missing = [n for n in names if n not in modules]
        if missing:
            raise InputError(
                f"site_names: no module named {missing[:3]} in the model; "
                f"expected names from model.named_modules()"
            )
        sites = [modules[n] for n in names]
        if len({id(s) for s in sites}) != len(sites):
            raise InputError(
                "site_names: one module object is used at several layers, so a hook "
                "on it cannot tell the layers apart; name per-layer modules instead"
            )
        model.eval()
        model.requires_grad_(False)  # attribution needs gradients w.r.t. neurons only
        self.model = model
        self.site_names = names
        self.reads_input = ffn_inputs is not None
        self._sites = sites
        self.preprocess = preprocess
        self.id2label = dict(id2label or {})
        self.name = name
        self.distillation_index = distillation_index
        self.input_shape = input_shape
        self.details: dict = {}  # family-specific facts for manifests (e.g. zero-shot classes)
        self._forward = forward or model
        self._layout = layout
        self._readout: Readout | None = None
        if isinstance(token, str):
            token = TokenPolicy.parse(token, distillation_index=distillation_index)
        if input_shape is None and preprocess is None:
            if token is None:
                raise InputError(
                    "ModelAdapter: pass input_shape=(channels, height, width) (or "
                    "preprocess) so the gradient probe can find where the head "
                    "reads, or token=..."
                )
            self._readout = Readout(
                (token,) * len(sites),
                "requested (not checked: the adapter has no input shape for a probe)",
            )
        else:
            self._readout = settle_readout(self, token, family_readout)

    @property
    def num_layers(self) -> int:
        return len(self._sites)

    def site(self, layer: int) -> nn.Module:
        if not 0 <= layer < self.num_layers:
            raise IndexError(
                f"layer {layer} out of range for a model with {self.num_layers} layers"
            )
        return self._sites[layer]

    @property
    def readout(self) -> Readout:
        """Every block's token policy and why (:mod:`neuronpath.engine.readout`)."""
        return self._readout

    @property
    def token(self) -> TokenPolicy:
        """The last stage's token policy, where the head reads (by which runs name it)."""
        return self._readout.head

    def token_at(self, layer: int) -> TokenPolicy:
        """The token policy of block ``layer``."""
        return self._readout.policies[layer]

    def layout(self, layer: int, tokens: int | None = None) -> TokenLayout:
        """Where block ``layer``'s ``tokens`` tokens (default: as many as on a probe input)
        sit in the image (:mod:`neuronpath.engine.layout`)."""
        if self._layout is None:
            return TokenLayout.none(
                "its adapter states no token layout (pass layout= to ModelAdapter)"
            )
        return self._layout(layer, probe(self).tokens[layer] if tokens is None else tokens)

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
        """Run ``layer_fns[l](value)`` on block l's FFN hidden state (rows, tokens, n) in every
        forward inside the context; a function that returns a tensor replaces the value.  Hooks
        are always removed, also when the body raises.  Every intervention of
        :mod:`neuronpath.engine.interventions` is built on this."""
        handles = []
        try:
            for layer, fn in layer_fns.items():
                site = self.site(layer)
                if self.reads_input:
                    handles.append(site.register_forward_pre_hook(_on_input(fn), with_kwargs=True))
                else:
                    handles.append(site.register_forward_hook(_on_output(fn)))
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
                raise InputError(
                    "input_shape: the adapter has neither an input shape nor a "
                    "preprocessing to build a probe input"
                )
            shape = tuple(self.preprocess(Image.new("RGB", (32, 32))).shape)
        generator = torch.Generator().manual_seed(0)
        return torch.randn((rows,) + tuple(shape), generator=generator, dtype=torch.float64).to(
            self.device, self.dtype
        )

    def widths(self) -> list[int]:
        """FFN width of every layer (hierarchical models differ per stage)."""
        return list(probe(self).widths)

    def width(self) -> int:
        """The FFN width n shared by all layers (an error for models whose widths differ)."""
        widths = self.widths()
        if len(set(widths)) > 1:
            raise InputError(
                f"width: the layers of {type(self.model).__name__} have different "
                f"FFN widths ({sorted(set(widths))}); use widths()"
            )
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
        layouts = [self.layout(l).describe() for l in range(self.num_layers)]
        return {
            "id": self.name,
            "class": type(self.model).__name__,
            "num_layers": self.num_layers,
            "sites": self.site_names,
            "site_reads": "input" if self.reads_input else "output",
            "token": self.token.describe(),
            "readout": self._readout.reason,
            "readout_per_block": self._readout.describe()["per_block"],
            "layout": layouts[-1],
            "layout_per_block": layouts,
            "num_labels": len(self.id2label),
            **self.details,
        }


def _on_input(fn: Callable) -> Callable:
    """A forward pre-hook running ``fn`` on a module's input (positional or ``input=``)."""

    def hook(module, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        key = next(iter(kwargs))
        new = fn(kwargs[key])
        return None if new is None else (args, {**kwargs, key: new})

    return hook


def _on_output(fn: Callable) -> Callable:
    """A forward hook running ``fn`` on a module's output."""

    def hook(module, inputs, output):
        return fn(output)

    return hook
