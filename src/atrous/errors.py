"""User-facing errors.

Every error a user can cause (a bad argument, a model or dataset that cannot be used) raises a subclass of
``AtrousError`` whose message names the culprit and the fix in one line. The CLI prints that line to stderr and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AtrousError(Exception):
    """Base class of errors caused by user input."""

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return str(self)


# Marks an option's name inside an OptionError message. NUL cannot occur in a path or a spec, so values
# formatted into the message are never taken for a mark.
_MARK = "\0"


def option(name: str) -> str:
    """``name`` (a Python parameter such as ``batch_size``) marked for an ``OptionError`` message."""
    return f"{_MARK}{name}{_MARK}"


class OptionError(AtrousError):
    """An error that names options: Python callers read the parameter (``batch_size``), the command line its
    flag (``--batch-size``), from one message written with ``option(...)`` marks."""

    def __init__(self, message: str) -> None:
        self.marked = message
        super().__init__(self._render(lambda name: name))

    def _render(self, spell) -> str:
        parts = self.marked.split(_MARK)
        parts[1::2] = [spell(name) for name in parts[1::2]]
        return "".join(parts)

    def for_cli(self) -> str:
        return self._render(lambda name: "--" + name.replace("_", "-"))


class ModelError(AtrousError):
    """A model name, factory path or model argument that cannot be used."""


class UnsupportedOpError(AtrousError):
    """The receptive-field engine met an operation it has no exact rule for."""


class AnalysisTooLargeError(AtrousError):
    """A receptive-field analysis outgrew its budget (index maps with too many phases along one axis); the
    message names the op, the module and an input size that avoids it."""


class InputShapeError(AtrousError):
    """An input shape the model or the tool cannot take."""


class ScheduleError(AtrousError):
    """A dilation schedule that is malformed."""


class SpecError(AtrousError):
    """A malformed ``name:key=value`` specification string."""


def one_line(exc: BaseException) -> str:
    """An exception of someone else's code as ``Type: first line of its message``."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``; did you mean ...?`` suffix naming the closest choices, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
