"""Saving that cannot lose a run: the checkpoint's size checked against the free space before
epoch 1, and a fallback when the checkpoint's own path cannot be written at the end.

The stop itself (Ctrl-C, SIGTERM, SIGHUP, a closed output) is one exception, ``Stop``
(gpumlp/formats/signals.py); ``RunFiles.interrupted`` saves what a stopped run did."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from gpumlp import optim
from gpumlp.errors import CheckpointError
from gpumlp.formats import atomic

HISTORY_BYTES = 600  # one epoch's record, in the checkpoint's history and in the metrics file
METADATA_BYTES = 64 * 1024  # configuration, run state, dataset fields, npz headers
JSON_FLOAT_BYTES = 24  # a float as JSON text: "-0.012345678901234567", plus ", "


def checkpoint_bytes(cfg, json: bool = False) -> int:
    """About how many bytes the checkpoint of ``cfg`` takes, at most: the parameters, the update
    rule's buffers and the best epoch's weights (early stopping) at the dtype's size (or as JSON
    text), plus its metadata."""
    n_params = sum((n_in + 1) * n_out for n_in, n_out in zip(cfg.sizes, cfg.sizes[1:]))
    rule = optim.RULES.get(cfg.optimizer)
    copies = 1 + len(rule.buffers if rule else ()) + (1 if cfg.patience else 0)
    per = JSON_FLOAT_BYTES if json else (8 if cfg.dtype == "float64" else 4)
    return n_params * copies * per + METADATA_BYTES + HISTORY_BYTES * cfg.epochs


def check_space(path: Path, need: int) -> None:
    """Refuse, before training, a checkpoint path whose filesystem cannot hold ``need`` bytes (the
    new file is written beside the old one, so an old file's space does not count)."""
    folder = Path(os.path.realpath(path)).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs (Windows) or an odd filesystem: the save will tell
        return
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise CheckpointError(
            f"{folder} has {_size(free)} free, and the checkpoint needs about {_size(need)}: "
            "free some space there or choose another --save path"
        )


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def rescue(save: Callable[[Path], None], path: Path, error: CheckpointError) -> Path:
    """``save`` could not write ``path`` (``error``): save to ``NAME.rescued.EXT`` beside it, else in
    the temp folder, and return where. When neither can be written, raises a ``CheckpointError``
    that says why for the path and where else it was tried."""
    name = path.with_name(f"{path.stem}.rescued{path.suffix}").name
    folders = (path.parent, Path(tempfile.gettempdir()))
    for folder in folders:
        try:
            target = atomic.free_path(folder / name)
            save(target)
        except CheckpointError:
            continue
        return target
    raise CheckpointError(f"{error}, nor as {name} beside it or in {folders[1]}")


def lost_message(why: str | None, done: int, epochs: int, error: Exception, kept: int = 0, path=None, go_on="") -> str:
    """The line for a run whose epochs could be saved neither on its path nor anywhere else
    (``why``: the stop that ended it, None for a run that finished): what is lost and why, and
    what to do; ``kept``: the epochs the checkpoint on ``path`` still holds (``go_on`` resumes it)."""
    if kept:
        return (
            f"{why or 'error'}: {_span(kept + 1, done)} of {epochs} could not be saved ({error}); {path} still "
            f"holds {_span(1, kept)}: free some space, then resume with: {go_on}"
        )
    return (
        f"{why or 'error'}: nothing could be saved, {_span(1, done)} of {epochs} lost ({error}); "
        "free some space or choose another --save path, and run again"
    )


def _span(first: int, last: int) -> str:
    return f"epochs {first}-{last}" if last > first else f"epoch {last}"


def rescued_message(path: Path, error: Exception, rescued: Path) -> str:
    return f"{error}; every epoch is saved in {rescued} instead (move it to {path} once there is room)"
