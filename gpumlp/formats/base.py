"""What a checkpoint format is: one record with how to recognise, read and write its files.

A ``Format`` is recognised by its name's suffix (or, for a name no format claims, by its first
bytes), then, where several formats share a syntax (gpumlp's, the Rust project's and Nielsen's
JSON), by its ``claims``. ``read`` gives ``(metadata, host parameters)``, every value checked;
building the network from them is ``checkpoint.build``'s job, the same for every format. The
table of formats is ``checkpoint.FORMATS``; the records live beside the code they call
(``native`` for gpumlp's own, ``interop`` for other projects'), and this module, which imports
neither, holds what they share.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gpumlp.errors import CheckpointError
from gpumlp.formats.untrusted import check_json_text, read_limited
from gpumlp.model import N_CLASSES, N_INPUTS

MAX_JSON_CONTAINERS = 1 << 20  # lists and objects: one per weight row; 2^20 rows of 784 would be 1.6 GB of JSON
MAX_FILE_LAYERS, MAX_FILE_UNITS = 1024, 1 << 20  # a file read declaring more is refused: far above any network
HEAD = 64  # bytes read to recognise a file by its start


class Source:
    """A file opened to be read as a network, as the format records see it: ``path``, the open
    binary file ``f`` (a regular, dense file of ``size`` bytes), ``suffix``, its name's suffix in
    lower case when some format claims it (``known_suffixes``) else None, its first bytes ``head``,
    and ``document()``, its JSON parsed once on first use (refused above ``json_limit`` bytes)."""

    def __init__(self, path: Path, f: BinaryIO, size: int, known_suffixes, json_limit: int):
        self.path, self.f, self.size, self.json_limit = path, f, size, json_limit
        suffix = path.suffix.lower()
        self.suffix = suffix if suffix in known_suffixes else None
        self.head = f.read(HEAD)
        f.seek(0)
        self._document = None
        self._parsed = False

    def document(self):
        """The file parsed as JSON (a dict, list, number, … as ``json.loads`` gives it)."""
        if not self._parsed:
            what = f"any gpumlp network ({self.json_limit:,} bytes)"
            text = read_limited(self.f, self.size, self.json_limit, self.path, CheckpointError, what, text=True)
            self._document = parse_json(text, self.path, self.json_limit)
            self._parsed = True
        return self._document


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how its files are recognised, read and written.

    ``read(source)`` → ``(metadata, host)``: ``metadata`` the dict ``gpumlp info`` shows and
    ``checkpoint.build`` reads (``sizes, activation, loss, init, dtype, input_divisor``, and for
    gpumlp's own formats ``state_arrays``, ``{name: (n_params,) array}``), ``host`` the parameters
    ``{W0: (n_in, n_out), b0: (n_out,), …}`` as numpy arrays. ``write(path, metadata, host, state)``
    writes them atomically (``state``: training state arrays, which a foreign file has no place for).
    """

    name: str  # "npz", "json", "rust", "nielsen"; a foreign format's is what `convert --to` takes
    label: str  # how messages and `gpumlp info` name it: "Rust MLP JSON"
    syntax: str  # how its bytes are laid out, as messages say it: "npz" or "JSON"
    suffixes: tuple[str, ...]  # names that mean this syntax, lower case: (".json",)
    magic: bytes  # what a file of this syntax starts with (after white space): b"PK", b"{"
    read: Callable[[Source], tuple[dict, dict]]
    write: Callable[[Path, dict, dict, dict], None]
    claims: Callable[[Source], bool] | None = None  # among formats of one syntax: is the file this one's?
    holds: str | None = None  # a foreign format: what its files hold, for `gpumlp info`; None: gpumlp's own

    @property
    def foreign(self) -> bool:
        """Another project's format: no gpumlp metadata, training history or state in its files."""
        return self.holds is not None

    def fits(self, source: Source) -> bool:
        """Whether ``source`` has this format's syntax: by its name when some format claims its
        suffix, else by its first bytes (Nielsen's ``save`` takes any name)."""
        if source.suffix is not None:
            return source.suffix in self.suffixes
        return source.head.lstrip(b" \t\r\n").startswith(self.magic)

    def detect(self, source: Source) -> bool:
        """Whether ``source`` is a file of this format: it ``fits`` and, if the format has a
        ``claims``, that claims it (a JSON format looks at the parsed document)."""
        return self.fits(source) and (self.claims is None or self.claims(source))


# ---------------------------------------------------------------- checks every format shares


def parse_json(data: bytes, path: Path, limit: int):
    """JSON text → Python objects, refused by size and by its count of lists and objects first."""
    check_json_text(data, limit, MAX_JSON_CONTAINERS, path, CheckpointError, f"any gpumlp checkpoint ({limit:,} bytes)")
    return json.loads(data)  # bytes: UTF-8 (or 16/32) detected by json itself


def short(value) -> str:
    """``repr(value)`` cut to 40 characters, for messages that quote a bad value."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def get(doc, key: str, name: str):
    """``doc[key]``, or a one-line error naming ``name`` (the file and format) and the key."""
    if not isinstance(doc, dict):
        raise CheckpointError(f"{name}: expected a JSON object, got {short(doc)}")
    if key not in doc:
        raise CheckpointError(f"{name}: missing key {key!r}")
    return doc[key]


def check_sizes(doc, key: str, name: str) -> tuple[int, ...]:
    """``doc[key]``: layer sizes, integers from 784 to 10 (``10.9`` is refused, never truncated),
    at most ``MAX_FILE_LAYERS`` of them and ``MAX_FILE_UNITS`` each: bounds checked before anything is built."""
    sizes = get(doc, key, name)
    if not isinstance(sizes, list) or not all(type(s) is int for s in sizes):
        raise CheckpointError(f"{name}: {key!r} must be a list of integers, got {short(sizes)}")
    if len(sizes) > MAX_FILE_LAYERS or any(s > MAX_FILE_UNITS for s in sizes):
        raise CheckpointError(
            f"{name}: {key!r} declares {len(sizes)} layers of up to {max(sizes):,} units; gpumlp networks have "
            f"at most {MAX_FILE_LAYERS} layers of {MAX_FILE_UNITS:,}"
        )
    if len(sizes) < 2 or sizes[0] != N_INPUTS or sizes[-1] != N_CLASSES or min(sizes) <= 0:
        raise CheckpointError(
            f"{name}: {key!r} must be positive sizes from {N_INPUTS} to {N_CLASSES}, e.g. [784, 16, 10] "
            f"(got {short(sizes)})"
        )
    return tuple(sizes)
