"""Named records of one kind (activations, losses, datasets): the table every part of gpumlp reads,
and the one way to add to it, so that a new variant is one record and one ``register`` call.

    LOSSES = Registry("loss")            # {name: record}, in the order registered
    LOSSES.register(record)               # by ``record.name`` (or ``name=``); a taken name is refused
    with LOSSES.registered(record): ...   # for the duration of a block (tests)
    LOSSES.lookup("ce")                   # the record, or a ConfigError naming the choices
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from gpumlp.errors import ConfigError

R = TypeVar("R")


class Registry(dict[str, R], Generic[R]):
    """``{name: record}`` of one ``kind``; ``label`` is how a refusal names the choice (``"--dataset"``)."""

    def __init__(self, kind: str, label: str | None = None):
        super().__init__()
        self.kind, self.label = kind, label or kind

    def register(self, record: R, name: str | None = None) -> R:
        """Add ``record`` as ``name`` (default: its ``name``); every command then accepts it."""
        name = name if name is not None else record.name
        if name in self:
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise ConfigError(
                f"{article} {self.kind} named {name!r} is already registered; give the new record another name"
            )
        self[name] = record
        return record

    def unregister(self, name: str) -> None:
        self.pop(name, None)

    @contextmanager
    def registered(self, record: R, name: str | None = None) -> Iterator[R]:
        """``register(record, name)`` for the duration of a ``with`` block (tests)."""
        name = name if name is not None else record.name
        self.register(record, name)
        try:
            yield record
        finally:
            self.unregister(name)

    def lookup(self, name) -> R:
        """The record of ``name``, refused with the choices when there is none (``get`` is dict's:
        None for an unknown name)."""
        if not isinstance(name, str) or name not in self:
            raise ConfigError(f"unknown {self.label} {name!r}: choose one of {self.choices()}")
        return self[name]

    def choices(self) -> str:
        """``"mse, ce"``: the registered names, read at call time (help texts, messages)."""
        return ", ".join(self)
