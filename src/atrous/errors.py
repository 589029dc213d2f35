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


class ModelError(AtrousError):
    """A model name, factory path or model argument that cannot be used."""


class UnsupportedOpError(AtrousError):
    """The receptive-field engine met an operation it has no exact rule for."""


class InputShapeError(AtrousError):
    """An input shape the model or the tool cannot take."""


class ScheduleError(AtrousError):
    """A dilation schedule that is malformed."""


class SpecError(AtrousError):
    """A malformed ``name:key=value`` specification string."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ``; did you mean ...?`` suffix naming the closest choices, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
