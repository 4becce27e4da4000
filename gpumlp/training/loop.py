"""The training loop: ``fit`` prepares a run, then trains one epoch and commits it, epoch by epoch.

The training set goes to the device once per run. Each epoch one permutation goes in (drawn on
the host, so the same seed gives the same batches on every device) and one number per metric
comes out; nothing inside the batch loop reads a device value.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpumlp.backends import blas_threads
from gpumlp.backends.base import on_device
from gpumlp.backends.graph import graph_epoch
from gpumlp.backends.rng import DeviceRNG
from gpumlp.errors import ConfigError
from gpumlp.formats.atomic import deferred_sigint
from gpumlp.inputs import check_pixels, is_bytes
from gpumlp.model import DTYPES, MLP, check_labels, pack
from gpumlp.optim import HYPERPARAMS, Optimizer, apply_max_norm, lr_at, make_optimizer
from gpumlp.training.augment import Augmenter
from gpumlp.training.config import DEFAULT_RECIPE, PATIENCE_NEEDS_VAL, RECIPE, TrainConfig, augment_config
from gpumlp.training.estimate import EpochEstimate
from gpumlp.training.evaluation import evaluate_loss
from gpumlp.training.presets import fit_recipe
from gpumlp.training.progress import with_progress
from gpumlp.training.state import EpochStats, TrainState
from gpumlp.training.stopping import EarlyStopping, Rollback, TrainingDiverged


def shuffle_rng(seed: int, state: dict | None = None) -> np.random.Generator:
    """The host generator of epoch permutations: a stream separate from the initial weights',
    continued from ``state`` (a ``bit_generator.state``) when resuming."""
    rng = np.random.default_rng([int(seed), 1])
    if state is not None:
        rng.bit_generator.state = state
    return rng


def with_blas_threads(f):
    """Run ``fit(model, …, state=…)`` with the run's CPU BLAS threads (``Backend.training_threads``),
    recorded in ``state.blas_threads``: a resumed run keeps its count, because some products round
    differently with another (``gpumlp.backends.blas_threads``); ``threads`` asks for a count.
    Afterwards the BLAS has its earlier count again."""

    @functools.wraps(f)
    def wrapper(model, *args, state=None, threads=None, **kwargs):
        state = state if state is not None else TrainState()
        largest = blas_threads.largest_product(model.sizes, kwargs["batch_size"]) if "batch_size" in kwargs else None
        state.blas_threads = model.be.training_threads(state.blas_threads, largest, threads)[0]
        with model.be.threads(state.blas_threads):
            return f(model, *args, state=state, **kwargs)

    return wrapper


def with_default_recipe(f):
    """``fit`` whose caller may leave out ``epochs``, ``batch_size``, ``lr`` and the rest of the
    recipe: without ``lr`` and ``optimizer``, the model's own recipe (``presets.fit_recipe``) with
    the options given on top; with either, the update rule and schedule are the caller's (SGD at a
    constant rate unless told otherwise) and only a missing ``epochs``/``batch_size`` is filled in."""

    @functools.wraps(f)
    def wrapper(model, *args, **kwargs):
        given = {k: v for k, v in kwargs.items() if not (v is None and k in ("epochs", "batch_size", "lr"))}
        _, recipe = fit_recipe(model.activation, model.loss)
        if "lr" in given or "optimizer" in given:
            recipe = {k: recipe[k] for k in ("epochs", "batch_size")}
        return f(model, *args, **{**recipe, **given})

    return wrapper


def _checked_recipe(model: MLP, X_train, X_val, *, epochs, batch_size, lr, seed, **recipe) -> dict:
    """``fit``'s ``recipe`` with the defaults filled in, and every value checked as the CLI checks
    it (by building the ``TrainConfig`` of the run)."""
    unknown = set(recipe) - set(RECIPE)
    if unknown:
        raise TypeError(f"fit() got unknown options {sorted(unknown)}")
    r = {**DEFAULT_RECIPE, **recipe}
    n_val = len(X_val) if X_val is not None else 0
    cfg = TrainConfig(sizes=model.sizes, activation=model.activation, loss=model.loss, dtype=model.dtype,
                      epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, train_size=len(X_train),
                      val_size=n_val, test_size=0, **r)  # fmt: skip
    # The counts as TrainConfig holds them: 10.0 is 10, as --batch-size 10 is.
    return {**r, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed}


def _optimizer(model: MLP, r: dict, state: TrainState) -> Optimizer:
    """The recipe's update rule for ``model``; a resumed run's (``state``) continues with its buffers."""
    hyper = {k: r[k] for k in HYPERPARAMS}  # every rule's; the chosen one takes its own
    opt = make_optimizer(r["optimizer"], model, weight_decay=r["weight_decay"], fuse=True, **hyper)
    if state.epochs_done and state.optimizer is not None:
        prefix = "optimizer."
        buffers = {k[len(prefix) :]: v for k, v in state.arrays.items() if k.startswith(prefix)}
        opt.load_state(state.optimizer, buffers)
    return opt


@with_default_recipe  # epochs, batch size, lr, … the caller left out: the model's recipe
@with_progress  # verbose: a Keras-style bar or a line per epoch on stderr, before the caller's callbacks
@np.errstate(over="ignore", invalid="ignore")  # numpy's overflow warnings: divergence is checked per epoch
@with_blas_threads  # on the CPU: the run's BLAS thread count, kept by a resumed run
@on_device  # on cuda:N, every allocation and kernel of the run goes to GPU N
def fit(
    model: MLP,
    X_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    state: TrainState | None = None,
    on_progress: Callable[[int, int, int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    verbose: int | str = "auto",  # (taken by with_progress)
    **recipe,
) -> list[EpochStats]:
    """Mini-batch training on host arrays X_train (n, 784) in [0, 1] and y_train (n,) labels, up to
    ``epochs`` epochs in all; returns the per-epoch history.

    ``recipe``: any of ``TrainConfig``'s optimiser, regularisation, schedule, early-stopping and
    augmentation options (``RECIPE``). Without ``lr`` and ``optimizer``, what is left out comes
    from the recipe that suits the model's activation and loss (``presets.fit_recipe``: the fast
    preset's for a ce network, the seed's for sigmoid/mse); with either, the rest keep their
    defaults (plain SGD, constant lr) and a missing ``epochs`` or ``batch_size`` is that recipe's.
    ``verbose``: 0 silent, 1 a progress bar per epoch, 2 one line per epoch, on stderr; ``"auto"``
    is 1 on a terminal or in a Jupyter notebook, else 0 (``gpumlp.training.progress``).
    ``state`` (updated after every epoch) continues an earlier run exactly. A last partial batch
    is trained on (mean over its real size). On Ctrl-C, or when an epoch ends with NaN or Inf in its
    loss or parameters (``TrainingDiverged``), the parameters and optimiser state are rolled back to
    the end of the last completed epoch, so ``model`` and ``state`` agree, and the exception is
    re-raised. With ``patience``, training stops after that many epochs without a better validation
    score and the model ends with the best epoch's weights (``state.weights_epoch``).

    ``on_progress(epoch, batches_done, n_batches, running_loss)``, for a progress display, is
    called about 50 times an epoch; each call reads the running loss from the device. ``log`` gets
    the one-line notes of ``cuda_graph`` (ignored on the CPU; a capture that failed); default stderr.
    """
    state = state if state is not None else TrainState()
    prep = _prepare(model, X_train, y_train, X_val, y_val, state, epochs, batch_size, lr, seed, recipe, log)
    for epoch in range(state.epochs_done + 1, prep.epochs + 1):
        stats = _one_epoch(prep, epoch, on_progress)
        stop = _commit(prep, state, stats)
        if on_epoch is not None:
            on_epoch(stats)
        if stop:
            break
    if prep.stopping is not None:
        with deferred_sigint():  # the model and ``state`` switch to the best epoch together
            prep.stopping.finish()
    return state.history


@dataclass
class _Prepared:
    """What ``fit`` prepares once and every epoch uses: the device arrays X (n, 784), Y (n, 10) and
    the validation pair (or None), the epoch's device loss vector ``losses`` (batch,), the
    optimiser, the training step and the epoch function, the permutation generator, early stopping
    (or None) and the snapshot of the last complete epoch."""

    model: MLP
    r: dict  # the checked recipe
    X: object
    Y: object
    val: tuple | None
    losses: object
    opt: Optimizer
    step: Callable
    train_epoch: Callable
    rng: np.random.Generator
    stopping: EarlyStopping | None
    last_complete: Rollback
    epochs: int
    batch_size: int
    lr: float
    progress_every: int
    estimate: EpochEstimate  # says how long the first epoch will take, when that is over a minute


def _prepare(model: MLP, X_train, y_train, X_val, y_val, state: TrainState, epochs: int, batch_size: int,
             lr: float, seed: int, recipe: dict, log) -> _Prepared:  # fmt: skip
    """``fit``'s checks, its arrays on the device, the optimiser (continued from ``state``), early
    stopping and the training step; on CuPy, the kernels compiled before epoch 1's clock starts."""
    if X_val is not None and y_val is None:
        raise ConfigError("X_val was given without y_val: pass the validation labels too, or neither")
    r = _checked_recipe(model, X_train, X_val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, **recipe)
    epochs, batch_size, lr, seed = r.pop("epochs"), r.pop("batch_size"), r.pop("lr"), r.pop("seed")
    # The labels on the host: on a GPU, take() would wrap an out-of-range label into another class.
    y_train = check_labels(model.be, y_train, len(X_train), "y_train")
    if X_val is not None and len(X_val):
        y_val = check_labels(model.be, y_val, len(X_val), "y_val")
    check_pixels(model.be, {"X_train": X_train, "X_val": X_val})  # once a run: one sync point
    if state.stopped_epoch:
        raise ConfigError(
            f"this run was stopped early after epoch {state.stopped_epoch} (best epoch {state.best_epoch}); "
            "start a new run to train further"
        )
    be, xp = model.be, model.be.xp
    dtype = DTYPES[model.dtype]
    X = model.inputs(X_train)  # (n, 784) on the device for the whole run
    Y = model.one_hot(y_train)  # (n, 10)
    val = None
    if X_val is not None and len(X_val) > 0:
        # evaluate's predict rescales; uint8 stays uint8, so that it is divided by 255 there
        val = be.asarray(X_val, dtype=None if is_bytes(X_val) else dtype), be.asarray(y_val)
    elif r["patience"]:
        raise ConfigError(PATIENCE_NEEDS_VAL)
    n = X.shape[0]
    rng = shuffle_rng(seed, state.rng_state)
    opt = _optimizer(model, r, state)
    stopping = EarlyStopping(model, state, r["patience"], r["monitor"]) if r["patience"] else None
    step = _make_step(model, opt, r, seed)
    last_complete = Rollback(model, opt)  # device copies: what Ctrl-C or divergence rolls back to
    # The epoch's summed loss, accumulated on the device: each step adds its batch's loss into it.
    losses = xp.zeros((min(batch_size, n),), dtype=dtype)  # (batch,)
    if be.compiles_kernels and state.epochs_done < epochs:  # CuPy: keep compilation out of epoch 1's time
        _warm_up(model, step, X, Y, losses, lr, last_complete, val)
    train_epoch = _train_epoch
    if r["cuda_graph"]:  # each whole batch one launch, captured after the warm-up (gpumlp/backends/graph.py)
        train_epoch = graph_epoch(model, opt, X, Y, losses.shape[0], _train_epoch, log or _to_stderr)
    progress_every = max(1, -(-n // batch_size) // 50)  # ~50 progress reports an epoch, when asked for
    estimate = EpochEstimate(be.synchronize, log or _to_stderr, -(-n // batch_size), progress_every,
                             epochs - state.epochs_done)  # fmt: skip
    return _Prepared(model, r, X, Y, val, losses, opt, step, train_epoch, rng, stopping, last_complete, epochs,
                batch_size, lr, progress_every, estimate)  # fmt: skip


def _one_epoch(prep: _Prepared, epoch: int, on_progress) -> EpochStats:
    """Train one epoch and validate; on Ctrl-C or divergence (``TrainingDiverged``), the model and
    optimiser go back to the last complete epoch and the exception is re-raised."""
    model, losses, batch_size = prep.model, prep.losses, prep.batch_size
    be, xp = model.be, model.be.xp
    n = prep.X.shape[0]
    t0 = time.perf_counter()
    try:
        report = _progress(be, on_progress, epoch, n, batch_size, losses) if on_progress is not None else None
        report = prep.estimate.report(report, epoch)  # the run's first epoch: timed over its first batches
        lr_e = _epoch_steps(prep, epoch, report)
        # The epoch's loss and a checksum of the parameters, in one transfer (a sync point):
        # NaN or Inf in either means training diverged.
        loss_sum, param_sum = be.to_numpy(xp.stack([losses.sum(), model.theta.sum()]))
        Rollback.check_finite(loss_sum, param_sum, epoch, n, lr_e)
        train_loss = float(loss_sum) / n
        train_seconds = time.perf_counter() - t0  # synchronised by the read above
        val_loss, val_acc = evaluate_loss(model, *prep.val, checked=True) if prep.val is not None else (None, None)
        be.synchronize()
    except (KeyboardInterrupt, TrainingDiverged):
        with deferred_sigint():  # a second Ctrl-C waits: a half-restored model is lost work
            prep.last_complete.restore()  # device → device: back to the last complete epoch
        raise
    seconds = time.perf_counter() - t0
    return EpochStats(epoch, train_loss, val_acc, seconds, float(lr_e), int(batch_size), val_loss, n / train_seconds)


def _epoch_steps(prep: _Prepared, epoch: int, report=None) -> float:
    """Epoch ``epoch``'s training steps, no sync: its permutation in and one step per batch.
    Returns the epoch's learning rate."""
    r = prep.r
    lr_e = lr_at(epoch, lr=prep.lr, epochs=prep.epochs, schedule=r["schedule"], warmup=r["warmup"],
                 step_size=r["step_size"], gamma=r["gamma"])  # fmt: skip
    perm = prep.model.be.asarray(prep.rng.permutation(prep.X.shape[0]))  # the epoch's one host → device transfer
    prep.train_epoch(prep.model.be, prep.step, prep.X, prep.Y, perm, prep.batch_size, lr_e, epoch,
                     prep.progress_every, prep.losses, report)  # fmt: skip
    return lr_e


def prepare_steps(model: MLP, X_train, y_train, *, epochs: int, batch_size: int, lr: float, seed: int, log=None,
                  **recipe) -> Callable[[], None]:  # fmt: skip
    """For a benchmark: ``fit``'s preparation done once (checks, arrays on the device, optimiser,
    CuPy's warm-up step), and ``run()``, which trains epochs 1 to ``epochs`` as ``fit`` does (each
    a permutation in and its batches' steps) with no validation, no end-of-epoch read-back and no
    sync: the caller synchronises. Each call trains on from the last; the epochs' learning rates
    and the run's BLAS threads are chosen as ``fit`` chooses them."""
    largest = blas_threads.largest_product(model.sizes, batch_size)
    with model.be.activate(), model.be.threads(model.be.training_threads(None, largest)[0]):
        prep = _prepare(model, X_train, y_train, None, None, TrainState(), epochs, batch_size, lr, seed, recipe, log)

    @np.errstate(over="ignore", invalid="ignore")  # as fit: divergence is not checked here
    def run() -> None:
        with model.be.activate(), model.be.threads(model.be.training_threads(None, largest)[0]):
            for epoch in range(1, epochs + 1):
                _epoch_steps(prep, epoch)

    return run


def _commit(prep: _Prepared, state: TrainState, stats: EpochStats) -> bool:
    """Make ``stats``' epoch the last complete one: the snapshot, ``state`` (its optimiser buffers
    packed as a checkpoint stores them) and early stopping move together. True: stop here."""
    model, epoch = prep.model, stats.epoch
    with deferred_sigint():  # the model, its snapshot and ``state`` move to this epoch together
        prep.last_complete.take()
        state.epochs_done, state.rng_state, state.weights_epoch = epoch, prep.rng.bit_generator.state, epoch
        state.history.append(stats)
        stopping = prep.stopping
        stop = stopping.update(epoch, stats.val_accuracy, stats.val_loss) if stopping is not None else False
        state.optimizer, buffers = prep.opt.state()
        # A checkpoint stores the parameters back to back, without the flat vector's alignment gaps.
        state.arrays = {f"optimizer.{k}": pack(v, model.sizes, model.be.xp) for k, v in buffers.items()}
        if stopping is not None:
            state.arrays.update(stopping.state_arrays())
    return stop


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _warm_up(model: MLP, step, X, Y, losses, lr: float, rollback: Rollback, val) -> None:
    """One training step on the first batch and the epoch's reductions, then undone (``rollback``
    restores the parameters, optimiser state and step count; each epoch zeroes ``losses``): the
    first use of each kernel compiles it (NVRTC, CUB), ~0.1–1 s that would otherwise count as
    epoch 1's training time."""
    b = losses.shape[0]  # a whole batch
    step(X[:b], Y[:b], lr, 1, 0, losses)
    model.be.to_numpy(model.be.xp.stack([losses.sum(), model.theta.sum()]))  # as each epoch's end does
    if val is not None:
        evaluate_loss(model, val[0][:b], val[1][:b], checked=True)
    rollback.restore()
    model.be.synchronize()


def _make_step(model: MLP, opt: Optimizer, r: dict, seed: int) -> Callable:
    """``step(Xb, Yb, lr, epoch, batch, losses)``: one training step on a device batch, with the
    recipe's augmentation, dropout and max-norm, adding the batch's loss into the device vector
    ``losses`` (``MLP.batch_loss_and_grads``); no sync."""
    p, max_norm = r["dropout"], r["max_norm"]
    drop_rng = DeviceRNG(model.be, seed, "dropout") if p else None
    aug = augment_config(r)
    augmenter = Augmenter(model.be, aug, seed, DTYPES[model.dtype]) if aug.kinds else None

    def step(Xb, Yb, lr: float, epoch: int, batch: int, losses) -> None:
        if augmenter is not None:
            Xb = augmenter(Xb, epoch, batch)  # (b, 784) new random distortions of this batch
        masks = model.dropout_masks(drop_rng, p, Xb.shape[0], epoch, batch) if p else None
        # Fills model.grad, and for SGD already steps the big weight matrices (Optimizer.fused_update).
        model.batch_loss_and_grads(Xb, Yb, masks, opt.fused_update(lr), losses)
        opt.step(lr)
        if max_norm:
            apply_max_norm(model, max_norm)

    return step


def _progress(be, on_progress: Callable, epoch: int, n: int, batch_size: int, losses) -> Callable[[int], None]:
    """``report(batches_done)``: ``on_progress(epoch, batches_done, n_batches, running_mean_loss)``,
    the running mean read from the epoch's device loss vector ``losses`` (a sync point)."""
    n_batches = -(-n // batch_size)

    def report(batch: int) -> None:
        on_progress(epoch, batch, n_batches, float(be.to_numpy(losses.sum())) / min(n, batch * batch_size))

    return report


def _train_epoch(be, step, X, Y, perm, batch_size: int, lr: float, epoch: int, progress_every: int, losses,
                 report=None) -> None:  # fmt: skip
    """One pass over the device arrays X (n, 784), Y (n, 10) in the order of the device permutation
    ``perm`` (n,), one ``step`` per batch, each adding its loss into the device vector ``losses``
    (batch,), zeroed first: its sum is the epoch's summed loss. No sync, except
    ``report(batches_done)`` (``_progress``) every ``progress_every`` batches."""
    n = X.shape[0]
    # The shuffled images are gathered a chunk of whole batches at a time (~``be.gather_images``),
    # and each batch is a view into its chunk: two gathers per chunk instead of two per batch (at
    # batch 10 each costs ~2 µs of a ~50 µs CPU step), without a shuffled copy of the whole set.
    chunk = batch_size * max(1, be.gather_images // batch_size)
    losses[...] = 0  # (batch,) the epoch's loss, summed at its end: no per-step sum or running total
    batch = 0
    for first in range(0, n, chunk):
        idx = perm[first : first + chunk]  # a view, no copy
        Xc, Yc = X.take(idx, axis=0), Y.take(idx, axis=0)  # (≤ chunk, 784), (≤ chunk, 10)
        for start in range(0, Xc.shape[0], batch_size):
            Xb, Yb = Xc[start : start + batch_size], Yc[start : start + batch_size]  # (b, 784), (b, 10) views
            step(Xb, Yb, lr, epoch, batch, losses)
            batch += 1
            if report is not None and batch % progress_every == 0:  # a sync point, for a progress display only
                report(batch)
