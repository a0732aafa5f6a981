"""Every failure a user can fix, as one family of exceptions, and how messages name options.

The library raises these with a message that names the input and what was expected (a bad
argument value is an :class:`InputError`, also a ``ValueError``); the command line prints such
an error as one line and treats every other exception as a bug.  Messages
name a parameter through :func:`option`, which reads ``labels='sorted-folders'`` from Python and
``--labels sorted-folders`` under :func:`command_line_options` (set by the CLI), so the library
speaks its own language and the CLI speaks flags.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

_CLI_STYLE = contextvars.ContextVar("neuronpath_cli_style", default=False)
_RENAMED: contextvars.ContextVar[dict] = contextvars.ContextVar("neuronpath_renamed", default={})


class NeuronpathError(Exception):
    """A failure caused by the user's input (a model, a folder, a file), with what to do.

    The command line prints these (and only these) as one line; anything else is a bug and
    keeps its traceback."""


class InputError(NeuronpathError, ValueError):
    """A bad argument value: an option out of range, an unknown name, a malformed file.

    Also a ``ValueError``, so Python callers may catch it as one."""


class PlantRefused(InputError):
    """``plant`` could not build or verify a chain on this model, image set and seed (a check
    failed, or a link cannot tell the one before it); nothing was written."""


class ModelLoadError(NeuronpathError):
    """A model that cannot be loaded, with what to do about it."""


class CheckpointError(NeuronpathError):
    """A checkpoint file that cannot be converted."""


class ImageReadError(NeuronpathError):
    """An image file that cannot be read or decoded."""


class RunConflictError(NeuronpathError):
    """An output folder that holds a run with other settings."""


class RunFormatError(NeuronpathError):
    """A run folder that is missing or damaged."""


class RunLockedError(RunConflictError):
    """A run folder another process is writing."""


def option(name: str, value: str | None = None) -> str:
    """How a message names parameter ``name`` (set to ``value``): ``name='value'`` for Python
    callers, ``--name value`` on the command line (under :func:`options_named`, the name a
    command gives the parameter instead)."""
    name = _RENAMED.get().get(name, name)
    if _CLI_STYLE.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is None else f"{flag} {value}"
    return name if value is None else f"{name}='{value}'"


@contextlib.contextmanager
def options_named(**names: str) -> Iterator[None]:
    """Within this context, :func:`option` names parameter ``old`` as ``names[old]``: a command
    that sets a shared parameter under its own flag (``prune`` sets K by ``--keep``)."""
    token = _RENAMED.set({**_RENAMED.get(), **names})
    try:
        yield
    finally:
        _RENAMED.reset(token)


@contextlib.contextmanager
def command_line_options() -> Iterator[None]:
    """Within this context, :func:`option` writes command-line flags."""
    token = _CLI_STYLE.set(True)
    try:
        yield
    finally:
        _CLI_STYLE.reset(token)
