"""What a sweep adds to each trial: Optuna's bookkeeping and the storage (claim, parameters,
per-epoch reports, heartbeat, user attributes, tell), measured on a real study.

Runs ``--trials`` trials of a tiny network (so that training is a small part) with one worker and
the default heartbeat, and takes the median time from one trial's end to the next one's; the same
training done by a bare ``fit`` (no Optuna, no storage), timed here, is subtracted. Then times
``--fast`` trials of the ``fast`` preset's recipe in the sweep, for scale.

    python scripts/sweep_overhead.py --storage sqlite:///sweeps/overhead.db
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from gpumlp.sweep.run import run_sweep
from gpumlp.sweep.space import check_space
from gpumlp.sweep.study import open_storage, open_study, storage_url
from gpumlp.training.presets import PRESETS

TINY = {"fixed": {"layers": "784,16,10", "epochs": 3, "train-size": 256, "val-size": 256, "batch-size": 128},
        "search": {"lr": {"low": 0.01, "high": 0.5, "log": True}}}  # fmt: skip


def fast_space() -> dict:
    fast = {("layers" if k == "sizes" else k.replace("_", "-")): v for k, v in PRESETS["fast"].items()}
    fast["layers"] = ",".join(map(str, fast["layers"]))
    lr = fast.pop("lr")
    return {"fixed": fast, "search": {"lr": {"choices": [lr]}}}


def measure(space: dict, study: str, url: str, trials: int) -> tuple[float, float]:
    """(median seconds from a trial's end to the next one's, median seconds in fit, as the trials
    recorded it) over ``trials`` trials."""
    t0 = time.perf_counter()
    run_sweep(check_space(space), study, url, trials, pruner="none", keep="none")
    wall = time.perf_counter() - t0
    ts = sorted(open_study(open_storage(url), study).get_trials(deepcopy=False), key=lambda t: t.number)
    ends = [t.datetime_complete.timestamp() for t in ts]
    cycle = statistics.median(b - a for a, b in zip(ends, ends[1:]))
    fit = statistics.median(t.user_attrs["seconds"] for t in ts)
    print(f"{study}: {trials} trials in {wall:.1f} s, one every {cycle:.3f} s (median)", flush=True)
    return cycle, fit


def bare_fit(space: dict, repeats: int) -> float:
    """Median seconds of the same training as ``space``'s trials by ``fit`` alone (lr fixed)."""
    from gpumlp.data.load import load_dataset, split
    from gpumlp.model import MLP
    from gpumlp.sweep.run import worker_threads
    from gpumlp.sweep.space import config
    from gpumlp.training.loop import fit

    cfg = config({**space["fixed"], "lr": 0.1})
    (X, y), (Xv, yv), _ = split(*load_dataset(cfg.dataset), cfg.train_size, cfg.val_size, 0)
    times = []
    for _ in range(repeats):
        model = MLP(cfg.sizes, cfg.activation, cfg.loss, cfg.init, cfg.seed, "cpu", cfg.dtype)
        t0 = time.perf_counter()
        fit(model, X, y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, X_val=Xv,
            y_val=yv, threads=worker_threads(1), **cfg.recipe())  # fmt: skip
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage", default=None, help="An Optuna storage URL; default: a temporary SQLite file")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--fast", type=int, default=3, help="trials of the fast preset, for scale (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.storage or storage_url(f"sqlite:///{Path(tmp) / 'overhead.db'}", "overhead")
        stamp = int(time.time())
        cycle, _ = measure(TINY, f"overhead-{stamp}", url, args.trials)
        bare = bare_fit(TINY, args.trials)
        overhead = cycle - bare
        print(f"bare fit {bare * 1000:.0f} ms; the sweep adds {overhead * 1000:.0f} ms per trial")
        if args.fast:
            _, fit = measure(fast_space(), f"fast-{stamp}", url, args.fast)
            print(f"overhead {overhead * 1000:.0f} ms = {100 * overhead / fit:.1f}% of a fast-preset trial "
                  f"({fit:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
