"""``name:key=value,...`` specification strings, shared by models and datasets on the CLI and in the API.

A value with commas is a list (``rates=1,2,5,9``): a token without ``=`` continues the previous key's list.
Values are parsed as int, float, bool (true/false) or left as strings.
"""

from __future__ import annotations

from typing import Any

from atrous.errors import SpecError


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_kwargs(text: str, what: str) -> dict[str, Any]:
    """``"rates=1,2,5,width=32"`` -> ``{"rates": (1, 2, 5), "width": 32}``."""
    kwargs: dict[str, list[str]] = {}
    last = None
    for token in filter(None, (t.strip() for t in text.split(","))):
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if not key.isidentifier():
                raise SpecError(f"bad key {key!r} in {what}; write key=value pairs such as width=32")
            kwargs[key] = [value.strip()]
            last = key
        elif last is None:
            raise SpecError(f"{token!r} in {what} has no key; write key=value pairs such as width=32")
        else:
            kwargs[last].append(token)
    return {
        k: parse_value(v[0]) if len(v) == 1 else tuple(parse_value(x) for x in v) for k, v in kwargs.items()
    }


def split_spec(spec: str) -> tuple[str, str]:
    """``"convstack:rates=1,2"`` -> ``("convstack", "rates=1,2")``."""
    name, _, rest = spec.partition(":")
    return name.strip(), rest
