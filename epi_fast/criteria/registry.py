"""Criterion names: one registry, read by every place that accepts a name (`prune`,
`EPIPruner`, both command lines)."""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Tuple

from .base import Criterion

__all__ = ["register_criterion", "get_criterion", "criterion_names", "gradient_criterion_names"]

_REGISTRY: Dict[str, Callable[[], Criterion]] = {}


def register_criterion(name: str, factory: Callable[[], Criterion]) -> None:
    """Make `name` resolve to `factory()` (a `Criterion`). A name is registered once."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"a criterion name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"criterion {name!r} is registered already")
    _REGISTRY[name] = factory


def get_criterion(criterion) -> Criterion:
    """A `Criterion` for a registered name, for "package.module:Name" (a `Criterion` subclass
    built without arguments, an instance, or a function returning one: how a command line
    names a criterion defined in the user's code), or the given `Criterion` instance itself."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, type) and issubclass(criterion, Criterion):
        raise TypeError(f"pass an instance of {criterion.__name__} (e.g. {criterion.__name__}()), not the class")
    if isinstance(criterion, str):
        if ":" in criterion:
            return _from_path(criterion)
        if criterion not in _REGISTRY:
            raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(criterion_names())}, "
                             "'package.module:Name' or an epi_fast.criteria.Criterion instance")
        return _REGISTRY[criterion]()
    raise TypeError(f"criterion must be a name or an epi_fast.criteria.Criterion, got {type(criterion).__name__}")


def _from_path(spec: str) -> Criterion:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"criterion {spec!r}: cannot import {module_name!r} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"criterion {spec!r}: module {module_name!r} has no {attr!r}")
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, Criterion):
        obj = obj()
    if not isinstance(obj, Criterion):
        raise ValueError(f"criterion {spec!r} is a {type(obj).__name__}, not an epi_fast.criteria.Criterion")
    return obj


def criterion_names() -> Tuple[str, ...]:
    """Every registered name, in registration order (the built-ins first)."""
    return tuple(_REGISTRY)


def gradient_criterion_names() -> Tuple[str, ...]:
    return tuple(n for n, f in _REGISTRY.items() if f().needs_gradients)
