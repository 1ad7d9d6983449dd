"""Small immutable records without dataclasses.

A dataclass costs about a millisecond to define (its methods are generated and compiled when the
module is imported), and importing ``dataclasses`` itself pulls in inspect, ast, dis and tokenize;
the modules every container start imports (the spec, the mount plan, mount options) use this base
instead. A record behaves as a frozen dataclass would: fields set once by ``__init__``, compared
(only with a record of the same class), hashed and shown by value, copied and pickled through
``__init__``.
"""

from __future__ import annotations

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing at run time
if TYPE_CHECKING:
    from typing import Any


class Record:
    """Base of the spec's records. A subclass names its fields in ``_fields`` (in ``__init__``'s
    order; they are its ``__slots__``) and sets them with ``_assign``; ``_compared`` (default: all of
    them) are the fields that equality, hashing and repr look at."""

    __slots__: tuple[str, ...] = ()
    _fields: tuple[str, ...] = ()
    _compared: tuple[str, ...] | None = None

    def _assign(self, *values: Any) -> None:
        for name, value in zip(self._fields, values, strict=True):
            object.__setattr__(self, name, value)

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._compared or self._fields)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._compared or self._fields)
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:  # copy and pickle rebuild it through __init__
        return type(self), tuple(getattr(self, name) for name in self._fields)

    def field_values(self) -> dict[str, Any]:
        """The fields by name (all of them, in ``__init__``'s order)."""
        return {name: getattr(self, name) for name in self._fields}

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` (dataclasses.replace's counterpart; __init__ must take the fields
        by name). An unknown field name is a TypeError, as there."""
        return type(self)(**{**self.field_values(), **changes})
