"""``record``: the agent's frozen dataclasses, for half the resident memory of each class.

``dataclasses.dataclass`` writes and compiles the source of six or seven methods for every
frozen, slotted class (``__init__``, ``__repr__``, ``__eq__``, ``__hash__``,
``__setattr__``, ``__delattr__``, pickling helpers): about 17 KB of resident memory per class
on CPython 3.11, and the agent defines about a hundred of them. Four of those methods do the
same thing in every class, field by field. ``record`` is ``dataclass`` (frozen and slotted
by default), after which ``__repr__``, ``__eq__``, ``__setattr__`` and ``__delattr__`` are
replaced by shared functions that read the class's fields; the compiled ones are freed.
Behaviour is unchanged: the same repr text, equality on the fields that take part in
comparisons (as a tuple, like dataclasses), ``FrozenInstanceError`` on assignment, and
``dataclasses.fields``/``replace``/``asdict`` work as on any dataclass. Measured: about 0.6 MB
less for an idle agent (docs/benchmarks.md, "Idle memory").
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass, field, fields
from typing import Any, TypeVar, overload

from typing_extensions import dataclass_transform

__all__ = ["field", "record"]

T = TypeVar("T")

_COMPARED = "__record_compared__"
_SHOWN = "__record_shown__"


def _names(cls: type[Any], attribute: str) -> tuple[str, ...]:
    names: tuple[str, ...] | None = cls.__dict__.get(attribute)
    if names is None:  # first use on this class (a subclass has its own)
        flag = "compare" if attribute == _COMPARED else "repr"
        names = tuple(f.name for f in fields(cls) if getattr(f, flag))
        setattr(cls, attribute, names)  # a class attribute: frozen instances are unaffected
    return names


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    cls = type(self)
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _names(cls, _SHOWN))
    return f"{cls.__qualname__}({shown})"


def _eq(self: Any, other: object) -> object:  # bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    names = _names(type(self), _COMPARED)
    mine: tuple[object, ...] = tuple([getattr(self, n) for n in names])
    theirs: tuple[object, ...] = tuple([getattr(other, n) for n in names])
    return mine == theirs


def _slim(cls: type[T]) -> type[T]:
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if params.frozen:
        type.__setattr__(cls, "__setattr__", _setattr)
        type.__setattr__(cls, "__delattr__", _delattr)
    if params.repr:
        type.__setattr__(cls, "__repr__", _repr)
    if params.eq:
        type.__setattr__(cls, "__eq__", _eq)
    return cls


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = True, slots: bool = True, kw_only: bool = False, eq: bool = True,
           repr: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = True, slots: bool = True,
           kw_only: bool = False, eq: bool = True,
           repr: bool = True) -> type[T] | Callable[[type[T]], type[T]]:
    """``@record`` or ``@record(kw_only=True, ...)``: a dataclass, frozen and slotted unless
    told otherwise, with the shared methods described in the module docstring."""

    def wrap(target: type[T]) -> type[T]:
        made = dataclass(frozen=frozen, slots=slots, kw_only=kw_only, eq=eq,
                         repr=repr)(target)
        return _slim(made)

    return wrap if cls is None else wrap(cls)
