"""Type checks of config values: one message for every wrong value, wherever it was set.

A value arrives from Python, a YAML preset, the command line (``--env-kwargs``, ``--hyperparams``) or a saved
``config.yml``, so a number may come as a string (YAML 1.1 reads ``1e-4`` as one) or an integer as ``1000.0``.
:func:`check_fields` checks every field of a config dataclass against its annotation before the range checks of its
``__post_init__`` run, and :func:`check_value` does the same for one value and a type hint (an algorithm's keyword
argument): a value that fits is returned as it is, one that fits unambiguously is converted (``"1e-4"`` -> 0.0001
for a float, ``1000.0`` -> 1000 for an integer), and anything else raises a ``ValueError`` that names the field and
what it expects, instead of a ``TypeError`` from a comparison deep inside the code.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

__all__ = ["check_dict", "check_fields", "check_value", "expected"]

_MISSING = object()


def check_fields(config: Any, prefix: str = "") -> None:
    """Check (and convert where unambiguous, in place) every field of the dataclass instance ``config``.

    Args:
        config: a dataclass instance whose annotations resolve (``typing.get_type_hints``).
        prefix: how the fields are named in messages, e.g. ``"detector."``.

    Raises:
        ValueError: ``<prefix><field>=<value> is invalid: expected <what>``.
    """
    for name, hint in _hints(type(config)).items():  # type: ignore[arg-type]
        value = getattr(config, name)
        converted = check_value(f"{prefix}{name}", value, hint)
        if converted is not value:
            setattr(config, name, converted)


def check_dict(values: dict[str, Any], config_class: type, prefix: str = "") -> dict[str, Any]:
    """``values`` for ``config_class(**values)``, each of a field's type (converted where unambiguous): for a class
    that does not check its own fields. Keys that are not fields are left for the constructor to refuse."""
    hints = _hints(config_class)
    return {key: check_value(f"{prefix}{key}", value, hints[key]) if key in hints else value for key, value in values.items()}


def check_value(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits ``hint``, converted where unambiguous; otherwise a ValueError naming ``name``."""
    converted = _coerce(value, hint)
    if converted is _MISSING:
        raise ValueError(f"{name}={_short(value)} is invalid: expected {expected(hint)}")
    return converted


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of the dataclass ``cls``'s fields (a field whose annotation does not resolve is not
    checked)."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.name in hints}


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(text: str) -> int | float | None:
    """``"1e-4"`` -> 0.0001, ``"5"`` -> 5; None for anything else."""
    for parse in (int, float):
        try:
            return parse(text.strip())
        except ValueError:
            pass
    return None


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (converted) if it fits ``hint``, else ``_MISSING``."""
    if hint is Any or hint is object:
        return value
    if hint is type(None):
        return value if value is None else _MISSING
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in sorted(args, key=lambda a: a is str):  # "5" for ``int | str`` is 5: a string only as a last resort
            converted = _coerce(value, arm)
            if converted is not _MISSING:
                return converted
        return _MISSING
    if hint is bool:
        return value if isinstance(value, bool) else _MISSING
    if hint is int:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, bool) or value is None:
            return _MISSING
        if isinstance(value, numbers.Integral):
            return value
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(float(value))
        return _MISSING
    if hint is float:
        if isinstance(value, str):
            value = _number(value)
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            return value
        return _MISSING
    if hint is str:
        return value if isinstance(value, str) else _MISSING
    if origin is tuple or origin is list or hint in (tuple, list):
        return _sequence(value, args, origin is tuple or hint is tuple)
    if origin is dict or hint is dict:
        return value if isinstance(value, dict) else _MISSING
    if origin is type:
        return value if isinstance(value, type) else _MISSING
    if origin is Callable or hint is Callable:
        return value if callable(value) else _MISSING
    if isinstance(hint, type):
        if dataclasses.is_dataclass(hint):
            return value if isinstance(value, hint) else _MISSING
        if hint.__module__ == "builtins":
            return value if isinstance(value, hint) else _MISSING
    return value  # a type this module does not know (a class, a protocol): the code that uses it checks it


def _sequence(value: Any, args: tuple[Any, ...], is_tuple: bool) -> Any:
    """A list or tuple whose items fit ``args`` (``(X, ...)``, ``(X, Y)`` or ``(X,)`` of a list), else ``_MISSING``."""
    if not isinstance(value, (list, tuple)):
        return _MISSING
    if not args:
        return value
    if is_tuple and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return _MISSING
        items = list(zip(value, args))
    else:
        items = [(item, args[0]) for item in value]
    out = [_coerce(item, arm) for item, arm in items]
    if any(item is _MISSING for item in out):
        return _MISSING
    if all(new is old for new, (old, _) in zip(out, items)):
        return value
    return type(value)(out)


def expected(hint: Any) -> str:
    """What ``hint`` accepts, in words: ``float | None`` -> "a number or null"."""
    if hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [expected(arm) for arm in args]
        words = [w for w in words if w != "a function"] or words  # a schedule cannot be given as text
        return " or ".join(dict.fromkeys(words))
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is tuple or origin is list or hint in (tuple, list):
        if not args:
            return "a list"
        if origin is tuple and args[-1] is not Ellipsis:
            return f"a list of {len(args)} ({', '.join(expected(a) for a in args)})"
        return f"a list of {expected(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or hint is dict:
        return "a dict"
    if origin is type:
        return "a class"
    if origin is Callable or hint is Callable:
        return "a function"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a dict of {hint.__name__} fields"
    return getattr(hint, "__name__", str(hint))
