"""Model adapters: what the attribution engine needs to know about a model.

An adapter holds the model, its *sites* -- one per block where its FFN hidden state (or its
attention heads' output) can be read and edited, :mod:`neuronpath.engine.sites` -- with the
units each site's coordinates group into (:mod:`neuronpath.engine.units`), every site's token
policy (checked by a gradient probe, :mod:`neuronpath.engine.readout`) and token layout
(:mod:`neuronpath.engine.layout`), how to get logits from pixels, the model's own preprocessing
and its label names.  The engine never touches a model family directly, so supporting a new
family means writing an adapter.  The engine calls each site a *layer*: for neuron and head
adapters the site of layer l is block l; a mixed adapter has two sites per block
(:attr:`ModelAdapter.blocks`).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError, option
from ..pathformat import unit_set
from .layout import TokenLayout
from .readout import Readout, probe, settle_readout
from .sae import LatentMap, SparseAutoencoder
from .tokens import TokenPolicy
from .units import UnitMap

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
        units: the unit map of every site (default: one neuron per coordinate, the FFN
            neurons of the paper; :mod:`neuronpath.engine.units`).
        blocks: the block of every site (default: site l is block l).
        folded: the sites whose modules see the tokens folded into the batch (windowed
            attention: (rows x windows, window tokens, coords)); they are unfolded to (rows,
            windows x window tokens, coords) around every hook.  Any other site whose batch
            differs from the input's is refused, naming the model.
        attention: ``attention(pixels, sites) -> {site: (rows, heads, queries, keys)}``, the
            attention weights of head sites over the site's own tokens (where the family can
            give them; for the page's head cards).
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
        units: Sequence[UnitMap] | None = None,
        blocks: Sequence[int] | None = None,
        folded: Sequence[int] = (),
        attention: Callable[[torch.Tensor, list[int]], dict] | None = None,
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
        self._output_sites: set[int] = set()  # sites read at a module's output despite reads_input
        self.preprocess = preprocess
        self.id2label = dict(id2label or {})
        self.name = name
        self.distillation_index = distillation_index
        self.input_shape = input_shape
        self.details: dict = {}  # family-specific facts for manifests (e.g. zero-shot classes)
        self.embedding_head = None  # a contrastive tower's embedding head (engine/direct.py)
        self._forward = forward or model
        self._layout = layout
        self._readout: Readout | None = None
        self._units = None if units is None else tuple(units)
        if self._units is not None and len(self._units) != len(sites):
            raise InputError(
                f"units: expected one unit map per site ({len(sites)}), got {len(units)}"
            )
        self.blocks = tuple(range(len(sites)) if blocks is None else blocks)
        self.folded = frozenset(folded)
        self.unfolded: set[int] = set()  # folded sites whose windows were seen and unfolded
        self._attention = attention
        self._rows: int | None = None  # rows of the pixel batch in the current forward
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

    def units(self, layer: int) -> UnitMap:
        """The unit map of site ``layer``: one neuron per coordinate unless the adapter was
        given others (a count of None: as many as the site has, :meth:`widths`)."""
        return UnitMap.neurons(None) if self._units is None else self._units[layer]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The unit kind of every site ("neuron" or "head")."""
        return tuple(self.units(l).kind for l in range(self.num_layers))

    @property
    def unit_set(self) -> str:
        """What this adapter's paths are made of: ``neurons``, ``heads`` or ``neurons+heads``
        (a mixed adapter, two sites per block)."""
        return unit_set(self.kinds, self.blocks)

    @property
    def num_blocks(self) -> int:
        return len(set(self.blocks))

    @property
    def attention_note(self) -> str | None:
        """Why this adapter's head cards have no attention patterns (None: they have, where a
        site's attention is over its own tokens)."""
        return None if self._attention else "its adapter gives no attention weights"

    def attention_weights(self, pixels: torch.Tensor, sites: Sequence[int]) -> dict:
        """``{site: (rows, heads, queries, keys)}`` attention weights of the head sites among
        ``sites`` whose queries and keys are the site's own tokens (windowed, pooled or
        reduced attention is left out), from one forward."""
        if self._attention is None:
            return {}
        tokens = probe(self).tokens
        weights = self._attention(pixels.to(self.device, self.dtype), list(sites))
        return {
            site: w
            for site, w in weights.items()
            if w is not None
            and site not in self.unfolded
            and w.shape[0] == pixels.shape[0]
            and w.shape[-2:] == (tokens[site], tokens[site])
        }

    def token_at(self, layer: int) -> TokenPolicy:
        """The token policy of block ``layer``."""
        return self._readout.policies[layer]

    def layout(self, layer: int, tokens: int | None = None) -> TokenLayout:
        """Where site ``layer``'s ``tokens`` tokens (default: as many as on a probe input)
        sit in the image (:mod:`neuronpath.engine.layout`): its block's layout, except at a
        site whose windows are unfolded from the batch (their tokens are in window order)."""
        if self._layout is None:
            return TokenLayout.none(
                "its adapter states no token layout (pass layout= to ModelAdapter)"
            )
        found = probe(self)  # (its forward notes which folded sites saw windows)
        if layer in self.unfolded:
            return TokenLayout.none(
                "windowed attention: the tokens are in window order, not the image's"
            )
        return self._layout(self.blocks[layer], found.tokens[layer] if tokens is None else tokens)

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.model.parameters())).dtype

    def to(self, device=None, dtype=None) -> "ModelAdapter":
        self.model.to(device=device, dtype=dtype)
        if self._units is not None:  # an SAE's weights follow the model
            self._units = tuple(
                LatentMap(m.sae.to(self.device, self.dtype)) if isinstance(m, LatentMap) else m
                for m in self._units
            )
        return self

    def use_saes(self, saes: Mapping[int, SparseAutoencoder]) -> None:
        """Read layer l through ``saes[l]``: the SAE's latents become the layer's units
        (:mod:`neuronpath.engine.sae`); an SAE of the residual stream moves the layer's site to
        the output of its block.  Every other layer keeps its units."""
        if self.unit_set != "neurons":
            raise InputError(
                f"SAE latents replace neurons; this adapter's units are {self.unit_set}"
            )
        maps = [self.units(l) for l in range(self.num_layers)]
        for layer, sae in sorted(saes.items()):
            if not 0 <= layer < self.num_layers:
                raise InputError(
                    f"{option('sae')}: layer {layer} out of range; the model has layers "
                    f"0..{self.num_layers - 1}"
                )
            trained_on = sae.origin.get("layer")
            if trained_on is not None and trained_on != layer:
                raise InputError(
                    f"{option('sae')}: {sae.origin.get('file')} was trained on layer {trained_on} "
                    f"(its hook {sae.origin.get('hook')!r}), not layer {layer}; give it as "
                    f"{trained_on}=PATH"
                )
        self.read_residual([l for l, sae in saes.items() if sae.site == "resid"])
        found = probe(self).widths
        for layer, sae in saes.items():
            if found[layer] != sae.d_in:
                where = "the residual stream" if sae.site == "resid" else "the FFN hidden state"
                raise InputError(
                    f"{option('sae')}: the SAE of layer {layer} ({sae.origin.get('file')}) reads "
                    f"{sae.d_in} coordinates, but {where} of layer {layer} has {found[layer]}"
                )
        self._units = tuple(
            LatentMap(saes[l].to(self.device, self.dtype))
            if l in saes
            else m
            if m.count is not None
            else UnitMap.neurons(found[l])
            for l, m in enumerate(maps)
        )

    def read_residual(self, layers) -> None:
        """Move the sites of ``layers`` from the FFN hidden state to the residual stream after
        their block (the output of the block's module), as residual-stream SAEs read it."""
        modules = dict(self.model.named_modules())
        for layer in layers:
            if layer in self._output_sites:
                continue
            parts = self.site_names[layer].split(".")
            last = max(i for i, p in enumerate(parts) if p.isdigit())
            block = ".".join(parts[: last + 1])
            self._sites[layer], self.site_names[layer] = modules[block], block
            self._output_sites.add(layer)
        self.__dict__.pop("_probe", None)  # the sites' shapes changed
        if self._units is not None:
            self._units = tuple(
                UnitMap.neurons(None) if l in self._output_sites and m.kind == "neuron" else m
                for l, m in enumerate(self._units)
            )

    def saes(self) -> dict[int, SparseAutoencoder]:
        """``{layer: its SAE}`` of the layers read through one."""
        return {
            l: m.sae for l in range(self.num_layers) if isinstance(m := self.units(l), LatentMap)
        }

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        self._rows = pixels.shape[0]
        out = self._forward(pixels.to(self.device, self.dtype))
        if hasattr(out, "logits"):
            out = out.logits
        elif isinstance(out, (tuple, list)):
            out = out[0]
        return out

    @contextlib.contextmanager
    def hooks(self, layer_fns: Mapping[int, Callable]) -> Iterator[None]:
        """Run ``layer_fns[l](value)`` on site l's hidden state (rows, tokens, coords) in every
        forward inside the context; a function that returns a tensor replaces the value.  Hooks
        are always removed, also when the body raises.  Every intervention of
        :mod:`neuronpath.engine.interventions` is built on this."""
        handles = [self.model.register_forward_pre_hook(self._note_rows, with_kwargs=True)]
        try:
            for layer, fn in layer_fns.items():
                site, fn = self.site(layer), self._unfolding(layer, fn)
                if self.reads_input and layer not in self._output_sites:
                    handles.append(site.register_forward_pre_hook(_on_input(fn), with_kwargs=True))
                else:
                    handles.append(site.register_forward_hook(_on_output(fn)))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _note_rows(self, module, args, kwargs) -> None:
        """The batch of the forward now starting (a forward pre-hook on the model)."""
        first = next((a for a in (*args, *kwargs.values()) if torch.is_tensor(a)), None)
        if first is not None:
            self._rows = first.shape[0]

    def _unfolding(self, layer: int, fn: Callable) -> Callable:
        """``fn`` on site ``layer``'s value with the batch checked: a folded site's windows are
        unfolded into its token axis and folded back; any other batch mismatch is refused."""
        folded = layer in self.folded

        def hook(value):
            rows = self._rows
            if rows is None or value.shape[0] == rows:
                return fn(value)
            if not folded or value.shape[0] % rows:
                raise InputError(
                    f"{type(self.model).__name__}: the site {self.site_names[layer]} sees "
                    f"{value.shape[0]} rows for a batch of {rows} images (its block folds "
                    f"tokens into the batch), so its units cannot be read per image; "
                    f"expected a model whose blocks keep one row per image"
                )
            windows, tokens = value.shape[0] // rows, value.shape[1]
            self.unfolded.add(layer)
            new = fn(value.reshape(rows, windows * tokens, *value.shape[2:]))
            return None if new is None else new.reshape(value.shape)

        return hook

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
        """Units of every layer: FFN neurons, or heads (hierarchical models differ per stage)."""
        counts = [self.units(l).count for l in range(self.num_layers)]
        if None in counts:
            counts = [c if c is not None else w for c, w in zip(counts, probe(self).widths)]
        return counts

    def width(self) -> int:
        """The number of units shared by all layers (an error for models whose widths
        differ)."""
        widths = self.widths()
        if len(set(widths)) > 1:
            raise InputError(
                f"width: the layers of {type(self.model).__name__} have different "
                f"{'FFN widths' if set(self.kinds) == {'neuron'} else 'unit counts'} "
                f"({sorted(set(widths))}); use widths()"
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
            **({"output_sites": sorted(self._output_sites)} if self._output_sites else {}),
            "token": self.token.describe(),
            "readout": self._readout.reason,
            "readout_per_block": self._readout.describe()["per_block"],
            "layout": layouts[-1],
            "layout_per_block": layouts,
            "units": sorted(set(self.kinds)),
            "units_per_site": [
                {**self.units(l).describe(), "count": n} for l, n in enumerate(self.widths())
            ],
            "site_blocks": list(self.blocks),
            "num_labels": len(self.id2label),
            "label_names": [self.id2label[i] for i in sorted(self.id2label)],
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
    """A forward hook running ``fn`` on a module's output (the first item of a tuple: a block
    that also returns attention weights)."""

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            new = fn(output[0])
            return None if new is None else (new, *output[1:])
        return fn(output)

    return hook
