"""``name:key=value,...`` specification strings, shared by models and datasets on the CLI and in the API.

A value with commas is a list (``rates=1,2,5,9``): a token without ``=`` continues the previous key's list.
Values are Python literals (``None``, ``True``, ``32``, ``'a,b'``, ``[False,True,True]``, ``(1,2)``), read with
``ast.literal_eval`` (never ``eval``); anything else is read as before: int, float, bool (true/false), none/null
or a bare string (``encoder=resnet34``). Commas and ``=`` inside brackets or quotes do not split.

Models also come as import paths, ``package.module:factory:key=value,...`` (see :func:`split_import_path`).
A model spec is parsed once, where it enters (the CLI, ``fit``, ``atrous.load``), into a :class:`ModelSpec`,
and travels as that value down to the factory.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atrous.errors import SpecError

_CLOSING = {"(": ")", "[": "]", "{": "}"}


def split_top(text: str, sep: str, what: str, maxsplit: int = -1) -> list[str]:
    """Split ``text`` at ``sep`` where it is outside brackets and quotes (``[False,True]`` stays one piece)."""
    pieces, start, stack, quote = [], 0, [], None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = None
        elif ch in "'\"" and text[:i].rstrip()[-1:] in ("", *",=([{"):
            quote = ch  # only where a value starts: an apostrophe inside a word (a path) is a character
        elif ch in _CLOSING:
            stack.append(_CLOSING[ch])
        elif ch in ")]}":
            if not stack or stack.pop() != ch:
                raise SpecError(f"unmatched {ch!r} in {what}")
        elif ch == sep and not stack and maxsplit != len(pieces):
            pieces.append(text[start:i])
            start = i + 1
    if quote or stack:
        raise SpecError(f"unclosed {quote or stack[-1]!r} in {what}; close it or quote the whole spec")
    return [*pieces, text[start:]]


def parse_value(text: str) -> Any:
    text = text.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    # Not a Python literal: the lenient forms zoo specs have always accepted (true, null, bare strings).
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return float(text)  # inf, nan
    except ValueError:
        return text


def parse_kwargs(text: str, what: str) -> dict[str, Any]:
    """``"rates=1,2,5,width=32,dilate=[False,True]"`` -> ``{"rates": (1, 2, 5), "width": 32, ...}``."""
    kwargs: dict[str, list[str]] = {}
    last = None
    for token in filter(None, (t.strip() for t in split_top(text, ",", what))):
        key, *value = split_top(token, "=", what, maxsplit=1)
        if value:
            key = key.strip()
            if not key.isidentifier():
                raise SpecError(f"bad key {key!r} in {what}; write key=value pairs such as width=32")
            kwargs[key] = [value[0]]
            last = key
        elif last is None:
            raise SpecError(f"{token!r} in {what} has no key; write key=value pairs such as width=32")
        else:
            kwargs[last].append(token)
    return {
        k: parse_value(v[0]) if len(v) == 1 else tuple(parse_value(x) for x in v) for k, v in kwargs.items()
    }


def parse_json_kwargs(text: str | None, what: str) -> dict[str, Any]:
    """A JSON object of keyword arguments (``{"weights": null}``), for values a spec cannot spell."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(
            f"{what} {text!r} is not valid JSON ({exc.msg}); write e.g. '{{\"weights\": null}}'"
        ) from None
    if not isinstance(value, dict):
        raise SpecError(
            f"{what} {text!r} must be a JSON object of keyword arguments, e.g. '{{\"weights\": null}}'"
        )
    return value


def split_spec(spec: str) -> tuple[str, str]:
    """``"convstack:rates=1,2"`` -> ``("convstack", "rates=1,2")``."""
    name, _, rest = spec.partition(":")
    return name.strip(), rest


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def split_import_path(spec: str) -> tuple[str, str, str] | None:
    """``"pkg.mod:factory:weights=None"`` -> ``("pkg.mod", "factory", "weights=None")``; None when ``spec``
    does not start with ``module:attribute`` (e.g. a zoo spec such as ``unet:width=16``)."""
    module, sep, rest = spec.partition(":")
    attr, _, args = rest.partition(":")
    if not sep or not _DOTTED.fullmatch(module.strip()) or not _DOTTED.fullmatch(attr.strip()):
        return None
    return module.strip(), attr.strip(), args


def with_kwargs(spec: str, kwargs: dict[str, Any]) -> str:
    """``spec`` with ``kwargs`` appended as Python literals, which :func:`parse_kwargs` reads back:
    ``with_kwargs("pkg.mod:factory", {"weights": None})`` -> ``"pkg.mod:factory:weights=None"``."""
    path = split_import_path(spec)
    args = path[2] if path is not None else split_spec(spec)[1]
    return _append(spec, bool(args.strip()), kwargs)


def _append(spec: str, has_args: bool, kwargs: dict[str, Any]) -> str:
    if not kwargs:
        return spec
    extra = ",".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{spec.rstrip(',')}{',' if has_args else ':'}{extra}"


@dataclass(frozen=True)
class ModelSpec:
    """A model spec, parsed: a zoo name with the defaults it registered, or an import path
    ``module:attribute``, or neither (an unknown name, which the code that builds models refuses in its own
    words); and the arguments the spec spells. Build it with :func:`parse_model_spec`."""

    text: str  # as written: messages quote it
    name: str  # what precedes the first ':' (a zoo name; the module of an import path)
    args: Mapping[str, Any] = field(default_factory=dict)  # the spec's own arguments
    defaults: Mapping[str, Any] = field(default_factory=dict)  # a zoo name's registered arguments
    zoo: bool = False
    factory: tuple[str, str] | None = None  # (module, attribute) of an import path
    has_args: bool = False  # whether the text has a non-blank argument part

    def arguments(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What the factory is called with: defaults, then the spec's arguments, then ``overrides``."""
        return {**self.defaults, **self.args, **(overrides or {})}

    def given(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The arguments a user chose (the spec's and ``overrides``), without the registered defaults."""
        return {**self.args, **(overrides or {})}

    def with_kwargs(self, kwargs: dict[str, Any]) -> str:
        """The text with ``kwargs`` appended (see :func:`with_kwargs`): the spec to type instead."""
        return _append(self.text, self.has_args, kwargs)


def parse_model_spec(text: str, defaults_of: Callable[[str], Mapping[str, Any] | None]) -> ModelSpec:
    """``text`` parsed once. ``defaults_of(name)`` is a zoo name's registered arguments, None for a name not in
    the zoo: a zoo name wins over an import path of the same spelling. An unknown name's arguments are not
    read, so that the error about the name comes first."""
    name, rest = split_spec(text)
    what = f"model spec {text!r}"
    defaults = defaults_of(name)
    if defaults is not None:
        return ModelSpec(text, name, parse_kwargs(rest, what), dict(defaults), True, None, bool(rest.strip()))
    path = split_import_path(text)
    if path is None:
        return ModelSpec(text, name)
    module, attr, args = path
    return ModelSpec(text, name, parse_kwargs(args, what), {}, False, (module, attr), bool(args.strip()))
