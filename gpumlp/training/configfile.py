"""Config files: ``gpumlp train``'s options in a TOML file (``gpumlp train --config FILE``).

The keys are the command's option names as the command line spells them, without ``--``
(``layers``, ``batch-size``, ``lr``, ``momentum``, …), plus ``threads`` (the CPU BLAS thread
count) and ``preset``. ``read`` checks a file with the same checks as the options themselves
and returns its values by ``TrainConfig`` field name (``sizes``, ``batch_size``, …); ``write``
writes such a dict back, so that ``read(write(x)) == x``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from gpumlp.errors import ConfigError
from gpumlp.training.config import TrainConfig, check_network_names, fields_by_option, option_name

EXTRA = ("threads",)  # keys that are not TrainConfig fields: gpumlp train's --threads
# gpumlp train's options that say where files are and how it prints, not what it trains
COMMAND_LINE_ONLY = ("config", "resume", "save", "save-every", "data-dir", "quiet", "log-format")


def read(path: str | os.PathLike) -> dict:
    """The options of config file ``path`` by ``TrainConfig`` field name (``layers`` is ``sizes``),
    normalised as ``TrainConfig.to_dict()`` gives them (``sizes`` a list of ints, ``lr`` a float),
    plus ``threads`` and ``preset`` when the file has them. Anything wrong is one ``ConfigError``
    naming the file."""
    from gpumlp.formats.untrusted import read_toml

    document = read_toml(path, "the config file", ConfigError)
    by_option = fields_by_option()
    options = {}
    for key, value in document.items():
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, dict) for v in value)):
            raise ConfigError(f"{path}: {key!r} is a table; a config file holds only `option = value` lines")
        if key in COMMAND_LINE_ONLY:
            raise ConfigError(f"{path}: {key!r} is given on the command line (gpumlp train --{key}), not in the file")
        if key not in by_option and key not in EXTRA:
            close = difflib.get_close_matches(key, [*by_option, *EXTRA], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; the keys are gpumlp train's option names"
            raise ConfigError(f"{path}: unknown option {key!r}{hint}")
        options[by_option.get(key, key)] = value
    return _checked(path, options)


def _checked(path, options: dict) -> dict:
    """``options`` checked as ``gpumlp train`` checks its options (by building the ``TrainConfig``
    they describe, over their preset), in the form ``TrainConfig.to_dict()`` gives them."""
    from gpumlp.backends.blas_threads import check_threads
    from gpumlp.training.presets import preset_options

    try:
        for name, value in options.items():
            expected = TrainConfig.__dataclass_fields__[name].type if name in TrainConfig.__dataclass_fields__ else ""
            if expected.startswith("str") and not isinstance(value, str) and name != "sizes":
                raise ConfigError(f"--{option_name(name)} must be a string in quotes (got {value!r})")
        if "sizes" in options and not isinstance(options["sizes"], (str, list)):
            got = options["sizes"]
            raise ConfigError(f'--layers must be a string such as "784,16,10" or a list [784, 16, 10] (got {got!r})')
        if "threads" in options:
            check_threads(options["threads"])
        fields = {k: v for k, v in options.items() if k not in EXTRA}
        preset = fields.get("preset")
        cfg = check_network_names(TrainConfig(**{**(preset_options(preset) if preset is not None else {}), **fields}))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    held = cfg.to_dict()
    return {k: (held[k] if k not in EXTRA else v) for k, v in options.items()}


def write(path: str | os.PathLike, options: dict, header: str = "") -> Path:
    """Write ``options`` (by ``TrainConfig`` field name, plus ``threads``; as ``read`` returns them)
    to the config file ``path``, atomically, after a comment: ``header``'s lines and how to use it.
    Options whose value is None (no ``init``: the activation's default; no ``preset``) are left
    out, which means the same. The file reads back to exactly ``options`` (``TrainConfig.to_dict()``
    with ``threads``, say, less its None values)."""
    from gpumlp.formats.atomic import atomic_write

    known = {f: o for o, f in fields_by_option().items()} | {k: k for k in EXTRA}
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ConfigError(f"cannot write {unknown[0]!r} to a config file: it is not a gpumlp train option")
    _refuse_to_replace(Path(path))
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append(f"# gpumlp train's options: gpumlp train --config {Path(path).name} (options given beside it win)")
    order = [k for k in known if k in options]  # TrainConfig's order, then threads
    lines += [f"{known[k]} = {_encode(k, options[k])}" for k in order if options[k] is not None]
    text = "\n".join(lines) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()), "the config file", error=ConfigError)


def _refuse_to_replace(path: Path) -> None:
    """Refuse an existing ``path`` that is not a TOML file: the user named it, but a network or a
    database given by mistake would be lost (``gpumlp sweep best --out model.npz``)."""
    from gpumlp.formats.untrusted import read_toml

    if not os.path.isfile(path):  # new; a folder or device: atomic_write refuses it
        return
    try:
        read_toml(path, "the file", ConfigError)
    except ConfigError:
        raise ConfigError(
            f"{path} exists and is not a TOML config file: gpumlp replaces only config files; choose another path"
        ) from None


def _encode(key: str, value) -> str:
    """``value`` as a TOML value: a string, whole number, float (by ``repr``, which reads back to
    the same float), flag, or list of whole numbers (the layer sizes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back to exactly this float; inf and nan too
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return "[" + ", ".join(str(v) for v in value) + "]"
    raise ConfigError(f"cannot write {key} = {value!r} to a config file: not a string, number, flag or list of sizes")


ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(s: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = (ESCAPES.get(c) or (f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in s)
    return '"' + "".join(out) + '"'
