"""Typed, documented, validated dataclass fields: the machinery behind every config group and
every merge method's parameters.

A field is made with :func:`param` (a default, a one-line description, optionally the allowed
values). :func:`coerce` converts a plain value (from YAML, the command line or Python) to the
field's type or raises ``ValueError`` naming it; :func:`from_mapping` builds a dataclass from a
mapping and refuses unknown keys with the valid ones listed (and the nearest one suggested), so
a typo such as ``train.learnin_rate`` fails instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import field
from typing import Any, TypeVar, Union

T = TypeVar("T")


def param(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its description (and allowed values) kept as field metadata;
    ``factory`` for mutable defaults (lists, dicts, nested dataclasses)."""
    meta = {"help": help, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    c = f.metadata.get("choices")
    if c is None:
        return None
    return tuple(c() if callable(c) else c)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A readable name of a field type (``float | None``, ``list[str]``)."""
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = typing.get_args(tp)
        inner = type_name(args[0]) if args else "Any"
        return f"{origin.__name__}[{inner}{', ...' if origin is tuple else ''}]"
    if origin is dict:
        return "mapping"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def coerce(label: str, tp: Any, value: Any) -> Any:
    """``value`` converted to the type ``tp``, or a ``ValueError`` that starts with ``label``
    (e.g. ``"merge parameter 'density'"`` or ``"train.learning_rate"``)."""
    if tp is Any:
        return value
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return coerce(label, inner, value)
            except ValueError as e:
                errors.append((inner, e))
        for inner, e in errors:  # a mapping for a nested config: its own error says what is wrong
            if dataclasses.is_dataclass(inner) and isinstance(value, Mapping):
                raise e
        raise ValueError(f"{label} must be {type_name(tp)}, got {value!r}")
    bad = ValueError(f"{label} must be {type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad
        return int(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if origin in (tuple, list):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            raise bad
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        out = [coerce(f"{label}[{i}]", inner, v) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise bad
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {str(k): coerce(f"{label}.{k}", vt, v) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise bad
        return from_mapping(tp, value, label)
    raise TypeError(f"unsupported field type {tp!r} for {label}")  # a bug in a dataclass


def check_fields(obj: Any, label: Callable[[str], str]) -> None:
    """Coerce every field of a frozen dataclass instance in place and check its ``choices``
    (call from ``__post_init__``); ``label(name)`` names a field in messages."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = coerce(label(f.name), hints[f.name], getattr(obj, f.name))
        allowed = choices_of(f)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{label(f.name)} must be one of {list(allowed)}, got {value!r}")
        object.__setattr__(obj, f.name, value)


def from_mapping(cls: type[T], mapping: Mapping[str, Any] | None, where: str) -> T:
    """``cls(**mapping)`` with unknown keys refused: ``ValueError`` naming ``where.<key>``, the
    nearest valid key and the valid ones."""
    mapping = dict(mapping or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, names, n=1)
            hints.append(f"{where}.{k}" + (f" (did you mean {where}.{close[0]}?)" if close else ""))
        raise ValueError(
            f"unknown config key(s) {', '.join(hints)}; valid keys of {where}: {names}"
        )
    return cls(**mapping)


def to_mapping(obj: Any) -> Any:
    """Plain values of a dataclass (tuples as lists, nested dataclasses as dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_mapping(v) for k, v in obj.items()}
    return obj


def describe(cls: type) -> list[dict[str, Any]]:
    """Each field of ``cls`` as ``{"name", "type", "default", "description"}``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = type_name(hints[f.name])
        allowed = choices_of(f)
        if allowed is not None:
            tp = f"{tp} ({' | '.join(allowed)})"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(
            {
                "name": f.name,
                "type": tp,
                "default": default,
                "description": f.metadata.get("help", ""),
            }
        )
    return out
