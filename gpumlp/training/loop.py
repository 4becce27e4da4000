"""The training loop and evaluation.

The training set goes to the device once per run. Each epoch one permutation goes in (drawn on
the host, so the same seed gives the same batches on every device) and one number per metric
comes out; nothing inside the batch loop reads a device value.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpumlp.backends import blas_threads
from gpumlp.backends.base import on_device
from gpumlp.backends.graph import graph_epoch
from gpumlp.backends.rng import DeviceRNG
from gpumlp.data import datasets
from gpumlp.data.load import load_dataset, split
from gpumlp.errors import ConfigError, GpumlpError
from gpumlp.formats import checkpoint
from gpumlp.formats.atomic import deferred_sigint
from gpumlp.model import DTYPES, MLP, check_labels, pack
from gpumlp.optim import HYPERPARAMS, Optimizer, apply_max_norm, lr_at, make_optimizer
from gpumlp.training.augment import Augmenter
from gpumlp.training.config import (  # noqa: F401  (TrainConfig and resume_config: re-exported for callers)
    DEFAULT_RECIPE,
    FIXED_ON_RESUME,
    PATIENCE_NEEDS_VAL,
    RECIPE,
    TrainConfig,
    augment_config,
    default_checkpoint,
    describe_recipe,
    resume_config,
)
from gpumlp.training.evaluation import evaluate, evaluate_loss  # noqa: F401  (evaluate: re-exported for callers)
from gpumlp.training.presets import preset_config
from gpumlp.training.runfiles import RunFiles, TrainingInterrupted, metrics_path  # noqa: F401  (re-exported for callers)
from gpumlp.training.stopping import EarlyStopping, Rollback, TrainingDiverged


@dataclass
class EpochStats:
    epoch: int
    train_loss: float  # mean loss over the epoch's batches
    val_accuracy: float | None  # fraction in [0, 1]; None without a validation set
    seconds: float  # wall time of the epoch, training and validation, device synchronised
    lr: float  # the options that may change when a run is resumed, as used in this epoch
    batch_size: int
    val_loss: float | None = None  # mean loss on the validation set
    images_per_s: float | None = None  # training throughput, validation excluded


@dataclass
class TrainState:
    """Where a run stands after its last completed epoch: enough to continue it exactly.

    ``optimizer`` and ``arrays`` carry what a checkpoint holds beyond the parameters: the
    optimiser's description and its state buffers, and early stopping's best weights (device
    arrays during a run, host arrays when loaded), each a flat (n_params,) vector.
    """

    epochs_done: int = 0
    rng_state: dict | None = None  # the permutation generator's bit_generator.state; None: fresh
    history: list[EpochStats] = field(default_factory=list)
    optimizer: dict | None = None  # Optimizer.state()'s description; None: fresh
    best_epoch: int | None = None  # early stopping: the epoch with the best validation score so far
    best_score: float | None = None  # that score (accuracy, or loss)
    stopped_epoch: int | None = None  # the epoch early stopping ended the run after; None: it did not
    weights_epoch: int | None = None  # the epoch whose weights the model holds (the best, once restored)
    blas_threads: int | None = None  # the CPU BLAS's thread count (some products round differently with another)
    arrays: dict = field(default_factory=dict)  # "optimizer.NAME", "best_theta", "last_theta"

    def to_dict(self) -> dict:
        keys = "epochs_done rng_state best_epoch best_score stopped_epoch weights_epoch blas_threads".split()
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_metadata(cls, meta: dict) -> TrainState:
        try:
            history = [EpochStats(**e) for e in meta.get("history", [])]
            state = meta["train_state"]
            keys = ("best_epoch", "best_score", "stopped_epoch", "weights_epoch", "blas_threads")
            extra = {k: state.get(k) for k in keys}
            optimizer = meta.get("optimizer") or {"name": "sgd"}
            return cls(int(state["epochs_done"]), dict(state["rng_state"]), history, dict(optimizer),
                       **extra, arrays=dict(meta.get("state_arrays") or {}))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the checkpoint has no usable training state to resume from ({e})") from None


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
    differently with another (``gpumlp.backends.blas_threads``). Afterwards the BLAS has its earlier count again."""

    @functools.wraps(f)
    def wrapper(model, *args, state=None, **kwargs):
        state = state if state is not None else TrainState()
        largest = blas_threads.largest_product(model.sizes, kwargs["batch_size"]) if "batch_size" in kwargs else None
        state.blas_threads = model.be.training_threads(state.blas_threads, largest)[0]
        with model.be.threads(state.blas_threads):
            return f(model, *args, state=state, **kwargs)

    return wrapper


def _checked_recipe(model: MLP, X_train, X_val, *, epochs, batch_size, lr, seed, **recipe) -> dict:
    """``fit``'s ``recipe`` with the defaults filled in, and every value checked as the CLI checks
    it (by building the ``TrainConfig`` of the run)."""
    unknown = set(recipe) - set(RECIPE)
    if unknown:
        raise TypeError(f"fit() got unknown options {sorted(unknown)}")
    r = {**DEFAULT_RECIPE, **recipe}
    n_val = len(X_val) if X_val is not None else 0
    TrainConfig(sizes=model.sizes, activation=model.activation, loss=model.loss, dtype=model.dtype, epochs=epochs,
                batch_size=batch_size, lr=lr, seed=seed, train_size=len(X_train), val_size=n_val, test_size=0,
                **r)  # fmt: skip
    return r


def _optimizer(model: MLP, r: dict, state: TrainState) -> Optimizer:
    """The recipe's update rule for ``model``; a resumed run's (``state``) continues with its buffers."""
    hyper = {k: r[k] for k in HYPERPARAMS}  # every rule's; the chosen one takes its own
    opt = make_optimizer(r["optimizer"], model, weight_decay=r["weight_decay"], fuse=True, **hyper)
    if state.epochs_done and state.optimizer is not None:
        prefix = "optimizer."
        buffers = {k[len(prefix) :]: v for k, v in state.arrays.items() if k.startswith(prefix)}
        opt.load_state(state.optimizer, buffers)
    return opt


@np.errstate(over="ignore", invalid="ignore")  # numpy's overflow warnings: divergence is checked per epoch
@with_blas_threads  # on the CPU: the run's BLAS thread count, kept by a resumed run
@on_device  # on cuda:N, every allocation and kernel of the run goes to GPU N
def fit(
    model: MLP,
    X_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    state: TrainState | None = None,
    on_progress: Callable[[int, int, int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
    **recipe,
) -> list[EpochStats]:
    """Mini-batch training on host arrays X_train (n, 784) in [0, 1] and y_train (n,) labels, up to
    ``epochs`` epochs in all; returns the per-epoch history.

    ``recipe``: any of ``TrainConfig``'s optimiser, regularisation, schedule, early-stopping and
    augmentation options (``RECIPE``); the rest keep their defaults (plain SGD, constant lr).
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
    r = _checked_recipe(model, X_train, X_val, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, **recipe)
    # The labels on the host: on a GPU, take() would wrap an out-of-range label into another class.
    y_train = check_labels(model.be, y_train, len(X_train), "y_train")
    if X_val is not None and len(X_val):
        y_val = check_labels(model.be, y_val, len(X_val), "y_val")
    state = state if state is not None else TrainState()
    if state.stopped_epoch:
        raise ConfigError(
            f"this run was stopped early after epoch {state.stopped_epoch} (best epoch {state.best_epoch}); "
            "start a new run to train further"
        )
    be, xp = model.be, model.be.xp
    dtype = DTYPES[model.dtype]
    X = model.inputs(X_train)  # (n, 784) on the device for the whole run
    Y = model.one_hot(y_train)  # (n, 10)
    has_val = X_val is not None and len(X_val) > 0
    if has_val:
        X_val, y_val = be.asarray(X_val, dtype=dtype), be.asarray(y_val)  # evaluate's predict rescales
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
        _warm_up(model, step, X, Y, losses, lr, last_complete, (X_val, y_val) if has_val else None)
    train_epoch = _train_epoch
    if r["cuda_graph"]:  # each whole batch one launch, captured after the warm-up (gpumlp/backends/graph.py)
        train_epoch = graph_epoch(model, opt, X, Y, losses.shape[0], _train_epoch, log or _to_stderr)
    progress_every = max(1, -(-n // batch_size) // 50)  # ~50 progress reports an epoch, when asked for
    for epoch in range(state.epochs_done + 1, epochs + 1):
        lr_e = lr_at(epoch, lr=lr, epochs=epochs, schedule=r["schedule"], warmup=r["warmup"],
                     step_size=r["step_size"], gamma=r["gamma"])  # fmt: skip
        t0 = time.perf_counter()
        try:
            perm = be.asarray(rng.permutation(n))  # the epoch's one host → device transfer
            report = _progress(be, on_progress, epoch, n, batch_size, losses) if on_progress is not None else None
            train_epoch(be, step, X, Y, perm, batch_size, lr_e, epoch, progress_every, losses, report)
            # The epoch's loss and a checksum of the parameters, in one transfer (a sync point):
            # NaN or Inf in either means training diverged.
            loss_sum, param_sum = be.to_numpy(xp.stack([losses.sum(), model.theta.sum()]))
            Rollback.check_finite(loss_sum, param_sum, epoch, n, lr_e)
            train_loss = float(loss_sum) / n
            train_seconds = time.perf_counter() - t0  # synchronised by the read above
            val_loss, val_acc = evaluate_loss(model, X_val, y_val) if has_val else (None, None)
            be.synchronize()
        except (KeyboardInterrupt, TrainingDiverged):
            with deferred_sigint():  # a second Ctrl-C waits: a half-restored model is lost work
                last_complete.restore()  # device → device: back to the last complete epoch
            raise
        seconds = time.perf_counter() - t0
        stats = EpochStats(
            epoch, train_loss, val_acc, seconds, float(lr_e), int(batch_size), val_loss, n / train_seconds
        )
        with deferred_sigint():  # the model, its snapshot and ``state`` move to this epoch together
            last_complete.take()
            state.epochs_done, state.rng_state, state.weights_epoch = epoch, rng.bit_generator.state, epoch
            state.history.append(stats)
            stop = stopping.update(epoch, val_acc, val_loss) if stopping is not None else False
            state.optimizer, buffers = opt.state()
            # A checkpoint stores the parameters back to back, without the flat vector's alignment gaps.
            state.arrays = {f"optimizer.{k}": pack(v, model.sizes, xp) for k, v in buffers.items()}
            if stopping is not None:
                state.arrays.update(stopping.state_arrays())
        if on_epoch is not None:
            on_epoch(stats)
        if stop:
            break
    if stopping is not None:
        with deferred_sigint():  # the model and ``state`` switch to the best epoch together
            stopping.finish()
    return state.history


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
        evaluate_loss(model, val[0][:b], val[1][:b])
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


def _score(score: float | None, monitor: str) -> str:
    if score is None:
        return "none"
    return f"{100 * score:.2f}%" if monitor == "accuracy" else f"loss {-score:.4f}"


@dataclass
class RunResult:
    model: MLP
    history: list[EpochStats]
    test_accuracy: float | None  # None when --test-size is 0
    checkpoint: Path | None


def command_config(options: dict, given: dict, preset: str | None = None, resume=None) -> TrainConfig:
    """The configuration ``gpumlp train`` runs: ``options`` holds every option (defaults included),
    ``given`` those typed on the command line. A preset's options go under the given ones; a
    resumed run takes its checkpoint's configuration, with the given options over it."""
    if resume is None:
        return preset_config(preset, **(given if preset else options))
    if preset is not None:
        raise ConfigError("--preset starts a new run; a resumed run keeps its checkpoint's options (drop --preset)")
    return resume_config(checkpoint.read_metadata(resume).get("config", {}), given)


def run(
    cfg: TrainConfig,
    data_dir: str | os.PathLike | None = None,
    save: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochStats], None] | None = None,
    resume: str | os.PathLike | None = None,
    save_every: int = 0,
    on_progress: Callable[[int, int, int, float], None] | None = None,
) -> RunResult:
    """Load MNIST, train ``cfg`` (continuing the checkpoint ``resume`` if given), test once at the
    end, and save a checkpoint (unless ``save=False``): every ``save_every`` epochs, at the end, and
    on Ctrl-C (then ``TrainingInterrupted`` is raised, at any moment). Beside the checkpoint,
    ``<name>.metrics.jsonl`` gets one JSON line per epoch, rewritten as each epoch ends (a resumed
    run's file starts with the checkpoint's history).

    Without ``save``, the checkpoint is ``default_checkpoint(cfg)``, or ``name-2.npz``, ``-3``, …
    when an earlier run's files are there. The checkpoint is locked for the whole run: another run
    saving to the same path is refused (``CheckpointError``)."""
    if save_every < 0:
        raise ConfigError(f"--save-every must be 0 or more (got {save_every})")
    path = None if save is False else checkpoint.check_writable(save or resume or default_checkpoint(cfg))
    rec = RunFiles(path, cfg, log, data_dir, save_every)
    try:
        try:
            return _run(cfg, rec, data_dir, log, on_epoch, resume, on_progress, named=bool(save or resume))
        except KeyboardInterrupt:
            raise rec.interrupted() from None  # saved under the lock
        finally:
            rec.release()
    except KeyboardInterrupt:  # one that came in the release, or in the save after a first Ctrl-C
        raise rec.interrupted() from None


def _run(cfg, rec: RunFiles, data_dir, log, on_epoch, resume, on_progress, named: bool) -> RunResult:
    if resume:
        model, meta = checkpoint.load(resume, device=cfg.device)
        state = TrainState.from_metadata(meta)
        _check_resumed(resume, cfg, state)
    else:
        model = MLP(cfg.sizes, cfg.activation, cfg.loss, cfg.init, cfg.seed, cfg.device, cfg.dtype)
        state = TrainState()
    if resume and state.blas_threads is None and meta.get("blas"):  # a CPU run from before counts were recorded:
        state.blas_threads = blas_threads.default_threads()  # it trained with the BLAS's own count
    largest = blas_threads.largest_product(model.sizes, cfg.batch_size)
    state.blas_threads, why = model.be.training_threads(state.blas_threads, largest)  # fit keeps this count
    # On the CPU, the BLAS this process trains through: numpy's own or Intel MKL round differently.
    rec.start(model, state, **({"blas": model.be.blas.name or "none"} if model.be.xp is np else {}))
    if model.be.note:
        log(model.be.note)
    data = load_dataset(cfg.dataset, data_dir)
    (X_tr, y_tr), (X_val, y_val), (X_te, y_te) = split(*data, cfg.train_size, cfg.val_size, cfg.test_size)
    rec.claim(named)
    start = f"from epoch {state.epochs_done} of {resume}, " if resume else ""
    threads = f", {state.blas_threads} BLAS thread{'s' if state.blas_threads != 1 else ''} ({why})" if why else ""
    log(
        f"training {model} on {len(X_tr)} {_images(cfg.dataset)} ({len(X_val)} for validation), {start}"
        f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, batch {cfg.batch_size}, {describe_recipe(cfg)}{threads}"
    )

    def after_epoch(stats: EpochStats) -> None:
        rec.write_metrics()
        if on_epoch is not None:
            on_epoch(stats)
        rec.save_every_k(stats.epoch)

    fit_args = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed, **cfg.recipe())
    try:
        fit(
            model, X_tr, y_tr, **fit_args, X_val=X_val, y_val=y_val, on_epoch=after_epoch, state=state,
            on_progress=on_progress, log=log,
        )  # fmt: skip
    except TrainingDiverged as e:
        if state.epochs_done > 0:
            rec.save()
            raise GpumlpError(f"{e}; saved the last finite epoch ({state.epochs_done}) to {rec.path}") from None
        raise GpumlpError(f"{e}; nothing saved") from None
    if state.weights_epoch is not None and state.weights_epoch != state.epochs_done:
        what = "stopped early" if state.stopped_epoch else "finished"
        log(f"{what} after epoch {state.epochs_done}; kept the weights of epoch {state.weights_epoch}, "
            f"the best validation {cfg.monitor} ({_score(state.best_score, cfg.monitor)})")  # fmt: skip
    elif state.stopped_epoch:
        log(
            f"stopped early after epoch {state.epochs_done}: "
            f"no better validation {cfg.monitor} in {cfg.patience} epochs"
        )
    # Ctrl-C in the test pass saves every epoch, untested (RunFiles.interrupted).
    with model.be.threads(state.blas_threads):
        test_acc = evaluate(model, X_te, y_te) if len(X_te) else None  # the only look at the test set
    rec.save(test_acc, len(X_te))
    return RunResult(model, state.history, test_acc, rec.path)


def _images(dataset: str) -> str:
    """``"images"``, or ``"Fashion-MNIST images"`` where the dataset is not MNIST."""
    return "images" if dataset == "mnist" else f"{datasets.get(dataset).title} images"


def _check_resumed(resume, cfg: TrainConfig, state: TrainState) -> None:
    """A resumed run must have epochs left to train. (That its configuration describes the network
    the checkpoint holds is checked when the checkpoint is read: gpumlp/formats/metadata.py.)"""
    if state.epochs_done >= cfg.epochs:
        raise ConfigError(
            f"{resume} already has {state.epochs_done} epochs; pass --epochs above {state.epochs_done} to continue"
        )
