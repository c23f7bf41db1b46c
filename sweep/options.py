"""Command-line values: each ``key=value`` word parsed and checked before anything runs.

A subcommand declares its keys with a parser each; a parser takes the text after ``=``
and returns the value or raises UsageError with what was expected. Nothing here imports
more than the standard library and PyYAML, so ``sweep --help`` and every usage error
answer in a fraction of a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable


class UsageError(ValueError):
    """A command line that cannot be used; the message says what was expected."""


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def text(value: str) -> str:
    if not value.strip():
        raise UsageError("must not be empty")
    return value


def boolean(value: str) -> bool:
    parsed = _yaml(value)
    if not isinstance(parsed, bool):
        raise UsageError("must be true or false")
    return parsed


def choice(*allowed: str) -> Callable:
    def parse(value: str) -> str:
        if value not in allowed:
            raise UsageError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def number(*, above: float | None = None, at_least: float | None = None, integer: bool = False) -> Callable:
    kind = "an integer" if integer else "a number"
    bound = f" > {above:g}" if above is not None else f" >= {at_least:g}" if at_least is not None else ""

    def parse(value: str):
        parsed = _yaml(value)
        ok = isinstance(parsed, int) if integer else isinstance(parsed, (int, float))
        if isinstance(parsed, bool) or not ok or not math.isfinite(parsed) \
                or (above is not None and not parsed > above) or (at_least is not None and not parsed >= at_least):
            raise UsageError(f"must be {kind}{bound}")
        return parsed

    return parse


def number_list(*, length: int | None = None, above: float | None = None, ascending: bool = False) -> Callable:
    each = number(above=above)

    def parse(value: str) -> list[float]:
        parsed = _yaml(value)
        shape = f"a list of {length} numbers" if length else "a non-empty list of numbers"
        shape += f" > {above:g}" if above is not None else ""
        shape += ", in increasing order" if ascending else ""
        if not isinstance(parsed, list) or not parsed or (length and len(parsed) != length):
            raise UsageError(f"must be {shape}, like [10,20]")
        try:
            if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in parsed):
                raise UsageError("not a number")
            values = [each(str(v)) for v in parsed]
        except UsageError:
            raise UsageError(f"must be {shape}, like [10,20]") from None
        if ascending and values != sorted(values):
            raise UsageError(f"must be {shape}")
        return values

    return parse


def parse(command: str, words: list[str], spec: dict[str, Callable], *, required: tuple[str, ...] = ()) -> dict:
    """``key=value`` words -> {key: parsed value}; every problem is a UsageError naming the word."""
    values = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or key not in spec:
            raise UsageError(f"unexpected argument {word!r}; sweep {command} takes key=value with key in "
                             f"{sorted(spec)}")
        if key in values:
            raise UsageError(f"{key}= is given twice")
        try:
            values[key] = spec[key](value)
        except UsageError as err:
            raise UsageError(f"{word}: {key} {err}") from None
    missing = [key for key in required if key not in values]
    if missing:
        raise UsageError(f"sweep {command} needs {' and '.join(f'{k}=...' for k in missing)}")
    return values
