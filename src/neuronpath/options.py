"""Options as dataclass fields: the one place where a setting's default, help text, type and
choices are written.

Every command's options -- and every path method's -- are frozen dataclasses whose fields carry
their help in ``metadata``; :func:`add_flags` makes the command-line flags from them and
:func:`read_flags` builds the objects back from the parsed flags, so the command line holds no
default and no help text of its own, a run's manifest records the objects, and the Python API
takes the same objects.  A field is one flag named after it (``batch_size`` -> ``--batch-size``)
unless its metadata says otherwise:

* ``help``: the help text (or a function returning it, for a list that can grow); the default
  is appended, ``(default: ...)``, from the field itself
  (``shown``: how to show a default the field resolves later, e.g. None -> 20);
* ``type`` / ``parse``: how the text is read (``parse``: any callable, e.g. :func:`names`);
  ``choices``: the allowed values;
* ``flag``: another flag name (``l1`` -> ``--slim-lambda``); ``old_flag``: a former name that
  still works, unlisted, with a line saying it moved; ``positional``: an argument without a flag
  (``nargs`` as argparse's); ``cli=False``: no flag (a Python-only field);
* ``nested``: the field is itself an options object whose fields become flags (``title``: the
  group they are shown in; ``optional``: None unless one of its flags is given).

Flags default to None ("not given"), so an object is built from what was given and the
dataclass's own defaults: a default is written once, in the dataclass.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .errors import InputError, option

MISSING = dataclasses.MISSING
OLD = "old_spelling_of_"  # where an old flag's value lands


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable | None = None,
    **meta: Any,
) -> Any:
    """A dataclass field with its help (and any of the metadata keys of the module docstring)."""
    metadata = {"help": help, **meta}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nested(
    cls: type,
    title: str | None = None,
    optional: bool = False,
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """A field holding another options object, whose fields become flags of their own (in a
    group ``title``); ``optional``: None unless one of its flags is given; ``defaults``: other
    defaults of its fields for this command (e.g. a larger batch)."""
    defaults = dict(defaults or {})
    metadata = {"nested": cls, "title": title, "optional": optional, "defaults": defaults}
    if optional:
        return dataclasses.field(default=None, metadata=metadata)
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata=metadata)


def names(text: str) -> tuple[str, ...]:
    """A comma-separated list of names (blanks dropped)."""
    return tuple(n.strip() for n in str(text).split(",") if n.strip())


FLOAT_LIMIT = (
    3.4028234663852886e38  # float32's largest: a larger option overflows a model's tensors
)


def finite(value) -> bool:
    """Whether a number option's value (or each of a list's) is finite and at most float32's
    largest in size: NaN, inf or 1e300 would reach a model's tensors as NaN or inf and be
    written without a word."""
    if isinstance(value, (tuple, list)):
        return all(finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= FLOAT_LIMIT
    return True


def numbers(cast: Callable, what: str) -> Callable[[str], tuple]:
    """A parser of comma-separated values of ``cast`` (``what`` names them in the error)."""

    def parse(text: str) -> tuple:
        try:
            return tuple(cast(v) for v in str(text).split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    parse.__name__ = f"comma-separated {what}"
    return parse


integers, floats = numbers(int, "integers"), numbers(float, "numbers")


def byte_size(text: str | int) -> int:
    """'2GiB', '512MiB', '1.5GB' or a plain number of bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(i?)B?\s*", str(text), re.IGNORECASE)
    if not match:
        raise InputError(
            f"{option('memory_budget')}: expected a size such as 2GiB or 512MiB, got {text!r}"
        )
    number, unit, binary = match.groups()
    base = 1024 if binary or not unit else 1000
    return int(float(number) * base ** " KMGT".index(unit.upper() or " "))


def flag_name(f: dataclasses.Field) -> str:
    """The attribute the parsed flag of field ``f`` lands in."""
    return f.metadata.get("flag", f.name)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field, defaults: Mapping[str, Any]) -> Any:
    if f.name in defaults:
        return defaults[f.name]
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _shown(value: Any) -> str | None:
    """A default as the help shows it; None: not shown (None, False, empty)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 2**20:
        for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
            if value % size == 0:
                return f"{value // size}{unit}"
    if value is None or value is False or value is MISSING or value == ():
        return None
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value)


def help_text(f: dataclasses.Field, defaults: Mapping[str, Any] = {}) -> str | None:
    """The field's help with its default appended (unless the help already states it)."""
    text = f.metadata.get("help") or ""
    text = text() if callable(text) else text  # a help that lists what exists when it is shown
    shown = f.metadata.get("shown") or _shown(_default(f, defaults))
    if shown is not None and "default" not in text and not f.metadata.get("positional"):
        text = f"{text} (default: {shown})" if text else f"default: {shown}"
    return text.replace("%", "%%") or None


def option_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are flags (nested objects' fields included, flattened)."""
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        if "nested" in f.metadata:
            out += option_fields(f.metadata["nested"])
        else:
            out.append(f)
    return out


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    defaults: Mapping[str, Any] | None = None,
    title: str | None = None,
    skip: tuple[str, ...] = (),
) -> None:
    """One flag (or positional argument) per field of the options class ``cls``; nested
    options objects get their own group.  ``defaults`` overrides a field's default for this
    command (shown in the help, used when the flag is not given)."""
    defaults = defaults or {}
    group = parser.add_argument_group(title) if title else parser
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli") is False or f.name in skip:
            continue
        if "nested" in meta:
            inner = {**meta.get("defaults", {}), **defaults}
            add_flags(parser, meta["nested"], defaults=inner, title=meta.get("title"), skip=skip)
            continue
        text = help_text(f, defaults)
        if meta.get("positional"):
            kwargs = {"help": text}
            for key in ("nargs", "choices"):
                if key in meta:
                    kwargs[key] = list(meta[key]) if key == "choices" else meta[key]
            group.add_argument(flag_name(f), **kwargs)
            continue
        if _default(f, {}) is False and "type" not in meta and "parse" not in meta:
            group.add_argument(flag_of(flag_name(f)), action="store_true", default=None, help=text)
            continue
        kwargs = {"help": text, "default": None}
        for key in ("choices", "metavar", "required"):
            if key in meta:
                kwargs[key] = list(meta[key]) if key == "choices" else meta[key]
        if "parse" in meta or "type" in meta:
            kwargs["type"] = meta.get("parse", meta.get("type"))
        group.add_argument(flag_of(flag_name(f)), **kwargs)
        if meta.get("old_flag"):  # the old spelling still works, for one release, unlisted
            old = {**kwargs, "help": argparse.SUPPRESS, "dest": OLD + flag_name(f)}
            group.add_argument(flag_of(meta["old_flag"]), **old)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """``{field: value}`` of the flags of ``cls`` given on the command line (nested objects
    not included)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or "nested" in f.metadata:
            continue
        value = getattr(args, flag_name(f), None)
        if value is not None:
            out[f.name] = value
    return out


def read_flags(
    args: argparse.Namespace,
    cls: type,
    *,
    defaults: Mapping[str, Any] | None = None,
    **values: Any,
) -> Any:
    """The options object of class ``cls`` from parsed flags: each field as given, else
    ``defaults`` (the command's), else the dataclass's own default; ``values`` set fields
    directly (those the command derives).  An ``optional`` nested object is None unless one of
    its flags was given."""
    defaults = defaults or {}
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in values or meta.get("cli") is False:
            continue
        if "nested" in meta:
            inner = meta["nested"]
            if meta.get("optional") and not any(
                getattr(args, flag_name(g), None) is not None for g in option_fields(inner)
            ):
                kwargs[f.name] = None
            else:
                own = {**meta.get("defaults", {}), **defaults}
                kwargs[f.name] = read_flags(args, inner, defaults=own)
            continue
        value = getattr(args, flag_name(f), None)
        old = getattr(args, OLD + flag_name(f), None)
        if old is not None:
            print(
                f"neuronpath: {flag_of(meta['old_flag'])} is now {flag_of(flag_name(f))} "
                f"(the old name will go)",
                file=sys.stderr,
            )
            value = old if value is None else value
        if value is None and f.name in defaults:
            value = defaults[f.name]
        if not finite(value):  # every number option, as given on the command line
            raise InputError(
                f"{option(f.name)}: expected a finite number no larger than {FLOAT_LIMIT:.3g} "
                f"in size (float32's largest), got {value!r}"
            )
        if value is not None:
            kwargs[f.name] = value
    return cls(**kwargs, **values)
