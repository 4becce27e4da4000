"""The space file of a sweep: ``[fixed]`` options given to every trial and ``[search]`` options
Optuna chooses, each by ``gpumlp train``'s own option name (``batch-size``, ``layers``). Every
value is checked by ``TrainConfig`` itself before any trial runs; each error is one line.

    [fixed]
    epochs = 3
    [search]
    lr = { low = 0.01, high = 1.0, log = true }
    batch-size = { choices = [32, 64, 128] }
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field

from gpumlp import optim
from gpumlp.backends.blas_threads import check_threads
from gpumlp.errors import GpumlpError, SweepError
from gpumlp.training.config import TrainConfig, check_network_names, fields_by_option

# Options a sweep refuses, with the reason, and those it takes only as fixed values: every trial
# must be scored on the same validation images, and never on the test images.
REFUSED = {
    "preset": "write the preset's options in [fixed] instead",
    "device": "give it to the command: gpumlp sweep run --device",
    "test-size": "a sweep scores trials on validation images only and never reads the test images",
}
FIXED_ONLY = {
    "dataset": "every trial is scored on the same images",
    "train-size": "the validation images follow the training images, so every trial must have the same",
    "val-size": "every trial is scored on the same validation images",
    "threads": "the BLAS thread count changes speed, not what a trial learns",
}
THREADS = "threads"  # gpumlp train --threads: not a TrainConfig field, but part of a run's options
RANGE_KEYS = {"low", "high", "log", "step"}
EXACT_INT = 2**53  # the largest whole number a float64 (Optuna's record of a trial's value) holds exactly


@dataclass(frozen=True)
class Param:
    """One ``[search]`` entry: a range (``low``, ``high``, ``log``, ``step``) or ``choices``."""

    option: str  # gpumlp train's name, also the Optuna parameter's
    kind: str  # "int", "float" or "choices"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def as_dict(self) -> dict:
        if self.kind == "choices":
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log, **({"step": self.step} if self.step else {})}

    def suggest(self, trial):
        """This parameter's value for the Optuna ``trial``."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.option, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.option, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.option, self.low, self.high, step=self.step, log=self.log)


@dataclass
class Space:
    """A checked space: ``fixed`` values and ``search`` parameters by option name."""

    fixed: dict = field(default_factory=dict)
    search: dict[str, Param] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The normalised space, as a study records it."""
        return {"fixed": dict(sorted(self.fixed.items())),
                "search": {k: p.as_dict() for k, p in sorted(self.search.items())}}  # fmt: skip

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def threads(self) -> int | None:
        return self.fixed.get(THREADS)

    def suggest(self, trial) -> dict:
        """Every option of one trial (fixed and chosen), by option name, ``threads`` left out."""
        chosen = {k: p.suggest(trial) for k, p in self.search.items()}
        return {**{k: v for k, v in self.fixed.items() if k != THREADS}, **chosen}


def config(options: dict) -> TrainConfig:
    """The ``TrainConfig`` of ``options`` given by option name (``threads`` aside), with the names
    the network checks when it is built (``MLP``): a value ``gpumlp train`` refuses raises here."""
    by_option = fields_by_option()
    return check_network_names(TrainConfig(**{by_option[k]: v for k, v in options.items() if k != THREADS}))


def read_space(path: str | os.PathLike) -> Space:
    """Read and check the space file ``path``; every error is a one-line ``SweepError``."""
    from gpumlp.formats.untrusted import read_toml

    doc = read_toml(path, "the space file", SweepError)
    try:
        return check_space(doc)
    except SweepError as e:
        raise SweepError(f"{path}: {e}") from None


def check_space(doc: dict) -> Space:
    """A ``Space`` from the parsed TOML document ``doc``, checked as ``gpumlp train`` checks its options."""
    for key, value in doc.items():
        if key not in ("fixed", "search") or not isinstance(value, dict):
            near = difflib.get_close_matches(str(key), ["fixed", "search"], 1)
            hint = f" (did you mean [{near[0]}]?)" if near else ""
            raise SweepError(f"unknown table {key!r}{hint}: a space file has [fixed] and [search] tables")
    fixed, search = dict(doc.get("fixed", {})), dict(doc.get("search", {}))
    if not search:
        raise SweepError("[search] names no option: give at least one, e.g. lr = { low = 0.01, high = 1.0 }")
    for table, keys in (("fixed", fixed), ("search", search)):
        for key in keys:
            _check_name(key, table)
    both = sorted(set(fixed) & set(search))
    if both:
        raise SweepError(f"{both[0]} is both fixed and searched: keep it in one of [fixed] and [search]")
    for key, value in fixed.items():
        if isinstance(value, dict):
            raise SweepError(f"[fixed] {key} is a table: [fixed] holds `option = value` lines (ranges go in [search])")
    space = Space({k: _normal(v) for k, v in fixed.items()})
    if THREADS in space.fixed:
        _guard(lambda: check_threads(space.fixed[THREADS]), f"[fixed] {THREADS}")
    _guard(lambda: config(space.fixed), "[fixed]")
    val = config(space.fixed).val_size
    if val < 1:
        raise SweepError(f"[fixed] val-size = {val}: a sweep scores each trial on validation images; give 1 or more")
    space.search = {k: _param(k, v, space.fixed) for k, v in search.items()}
    _check_rule_hyperparams(space)
    return space


def _check_name(key: str, table: str) -> None:
    known = [*fields_by_option(), THREADS]
    if key not in known:
        near = difflib.get_close_matches(key, known, 1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise SweepError(f"[{table}] {key}: no gpumlp train option has this name{hint}")
    if key in REFUSED:
        raise SweepError(f"[{table}] {key}: not an option a sweep takes; {REFUSED[key]}")
    if table == "search" and key in FIXED_ONLY:
        raise SweepError(f"[search] {key}: a sweep cannot search it ({FIXED_ONLY[key]}); put it in [fixed]")


def _normal(value):
    """A value as the study records it: layer sizes as ``"784,256,10"`` (Optuna's choices are scalars)."""
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return ",".join(map(str, value))
    return value


def _guard(check, where: str):
    """Run ``check``; a ``GpumlpError`` becomes a ``SweepError`` saying ``where`` (one line)."""
    try:
        return check()
    except GpumlpError as e:
        raise SweepError(f"{where}: {e}") from None


def _param(option: str, entry, fixed: dict) -> Param:
    """The ``[search]`` entry for ``option``, every value it allows checked by ``TrainConfig``."""
    where = f"[search] {option}"
    if not isinstance(entry, dict):
        raise SweepError(f"{where}: give a range {{ low = …, high = … }} or {{ choices = [...] }}, not {entry!r}")
    keys = set(entry)
    if keys == {"choices"}:
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise SweepError(f"{where}: choices must be a non-empty list")
        param = Param(option, "choices", choices=tuple(_normal(c) for c in choices))
        values = param.choices
        twice = [c for i, c in enumerate(values) if any(type(c) is type(d) and c == d for d in values[:i])]
        if twice:  # twice as likely to be tried, and one Optuna value for two of its indices
            raise SweepError(f"{where}: choices name {twice[0]!r} twice; give each value once")
    elif {"low", "high"} <= keys <= RANGE_KEYS:
        param = _range(option, entry, where)
        values = (param.low, param.high)
    else:
        extra = sorted(keys - RANGE_KEYS - {"choices"})
        what = f"unknown key {extra[0]!r}" if extra else "give low and high, or choices (not both)"
        raise SweepError(f"{where}: {what}; a range is {{ low, high, log?, step? }}, a list {{ choices = [...] }}")
    for value in values:
        _guard(lambda v=value: config({**fixed, option: v}), f"{where} = {value!r}")
    return param


def _range(option: str, entry: dict, where: str) -> Param:
    kind = TrainConfig.__dataclass_fields__[fields_by_option()[option]].type
    if kind not in ("int", "float"):
        raise SweepError(f"{where}: {option} is not a number; give {{ choices = [...] }}")
    low, high, log, step = entry["low"], entry["high"], entry.get("log", False), entry.get("step")
    number = (int,) if kind == "int" else (int, float)
    for name, v in (("low", low), ("high", high), *((("step", step),) if step is not None else ())):
        if isinstance(v, bool) or not isinstance(v, number):
            raise SweepError(f"{where}: {name} must be {'a whole number' if kind == 'int' else 'a number'}, not {v!r}")
    if not isinstance(log, bool):
        raise SweepError(f"{where}: log must be true or false, not {log!r}")
    if kind == "int" and max(abs(low), abs(high)) > EXACT_INT:  # Optuna stores a trial's values as floats
        raise SweepError(f"{where}: a searched whole number must be within ±{EXACT_INT:,} (2**53), which Optuna "
                         "records exactly; larger ones come back rounded")  # fmt: skip
    if not low < high:
        raise SweepError(f"{where}: low ({low}) must be below high ({high}); a single value belongs in [fixed]")
    if log and low <= 0:
        raise SweepError(f"{where}: a log range needs low above 0 (got {low})")
    if step is not None and (log or not step > 0):
        raise SweepError(f"{where}: step must be positive, and a log range takes none (got step = {step})")
    if step is not None:
        _check_step(low, high, step, where)
    if kind == "float":
        low, high, step = float(low), float(high), None if step is None else float(step)
    return Param(option, kind, low, high, log, step)


def _check_step(low, high, step, where: str) -> None:
    """Refuse a ``step`` that does not divide ``high - low``: Optuna would quietly lower ``high`` to
    the last step below it. Decimal arithmetic on the numbers' shortest text, as Optuna's check
    (0.1 to 1.0 by 0.3 divides; in binary floating point it would not)."""
    from decimal import Decimal

    d_low, d_high, d_step = (Decimal(str(v)) for v in (low, high, step))
    steps = (d_high - d_low) / d_step
    if steps != steps.to_integral_value():
        below = d_low + int(steps) * d_step
        raise SweepError(
            f"{where}: step {step} does not divide high - low ({d_high - d_low}); the last value would be "
            f"{below}, not {high}: make high {below} or {below + d_step}, or choose another step"
        )


def _check_rule_hyperparams(space: Space) -> None:
    """Refuse an update rule hyper-parameter (``momentum``) that some optimizer of the sweep ignores."""
    opt = space.search.get("optimizer")
    rules = opt.choices if opt is not None else (space.fixed.get("optimizer", TrainConfig.optimizer),)
    for key in sorted((set(space.fixed) | set(space.search)) & set(optim.HYPERPARAMS)):
        ignored = [r for r in rules if key not in optim.RULES[r].hyperparams]
        if ignored:
            where = "[search]" if key in space.search else "[fixed]"
            raise SweepError(
                f"{where} {key}: --optimizer {ignored[0]} ignores it, so its trials would not depend on it; "
                f"search only optimizers that use {key}, or drop it"
            )
