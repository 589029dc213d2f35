"""``name:key=value,...`` specification strings, shared by models and datasets on the CLI and in the API.

A value with commas is a list (``rates=1,2,5,9``): a token without ``=`` continues the previous key's list.
Values are Python literals (``None``, ``True``, ``32``, ``'a,b'``, ``[False,True,True]``, ``(1,2)``), read with
``ast.literal_eval`` (never ``eval``); anything else is read as before: int, float, bool (true/false), none/null
or a bare string (``encoder=resnet34``). Commas and ``=`` inside brackets or quotes do not split.

Models also come as import paths, ``package.module:factory:key=value,...`` (see :func:`split_import_path`).
"""

from __future__ import annotations

import ast
import json
import re
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
    if not kwargs:
        return spec
    path = split_import_path(spec)
    args = path[2] if path is not None else split_spec(spec)[1]
    extra = ",".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{spec.rstrip(',')}{',' if args.strip() else ':'}{extra}"
