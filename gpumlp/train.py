"""The training loop and evaluation.

The training set goes to the device once per run. Each epoch one permutation goes in (drawn on
the host, so the same seed gives the same batches on every device) and one number per metric
comes out; nothing inside the batch loop reads a device value.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from gpumlp import checkpoint
from gpumlp.data import MNIST_FILES, load_mnist, split
from gpumlp.errors import ConfigError, GpumlpError
from gpumlp.model import DTYPES, MLP, parse_sizes
from gpumlp.optim import SGD

EVAL_CHUNK = 10_000  # images per forward pass when evaluating: bounds activation memory


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the Rust project's reference row."""

    sizes: tuple[int, ...] = (784, 16, 16, 10)  # layer sizes: 784 inputs … 10 classes
    activation: str = "sigmoid"  # hidden layers: sigmoid, relu or tanh
    loss: str = "mse"  # mse: sigmoid outputs + ½‖a−y‖²; ce: softmax + cross-entropy
    init: str | None = None  # normal, lecun, he, xavier; None: the activation's default
    epochs: int = 30  # passes over the training images
    batch_size: int = 10  # images per SGD step (mean loss over the batch)
    lr: float = 3.0  # SGD learning rate η
    train_size: int = 50_000  # images from the start of the training file
    val_size: int = 10_000  # images right after them, for validation after each epoch
    test_size: int = 10_000  # images from the start of the test file, read once at the end
    seed: int = 0  # initial weights and epoch permutations
    dtype: str = "float32"  # float32 or float64
    device: str = "cpu"  # auto, cpu, cuda or cuda:N

    def __post_init__(self):
        self.sizes = parse_sizes(self.sizes)
        for name in ("epochs", "batch_size", "train_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("val_size", "test_size", "seed"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if not np.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive finite number, e.g. 3.0 (got {self.lr})")
        if self.batch_size > self.train_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than --train-size {self.train_size}; "
                "use a smaller batch or more training images"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


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
    """Where a run stands after its last completed epoch: enough to continue it exactly."""

    epochs_done: int = 0
    rng_state: dict | None = None  # the permutation generator's bit_generator.state; None: fresh
    history: list[EpochStats] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"epochs_done": self.epochs_done, "rng_state": self.rng_state}

    @classmethod
    def from_metadata(cls, meta: dict) -> TrainState:
        try:
            history = [EpochStats(**e) for e in meta.get("history", [])]
            state = meta["train_state"]
            return cls(int(state["epochs_done"]), dict(state["rng_state"]), history)
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the checkpoint has no usable training state to resume from ({e})") from None


def shuffle_rng(seed: int, state: dict | None = None) -> np.random.Generator:
    """The host generator of epoch permutations: a stream separate from the initial weights',
    continued from ``state`` (a ``bit_generator.state``) when resuming."""
    rng = np.random.default_rng([int(seed), 1])
    if state is not None:
        rng.bit_generator.state = state
    return rng


def evaluate(model: MLP, X, y) -> float:
    """Accuracy in [0, 1] of ``model`` on images X (n, 784) and labels y (n,), host or device.

    Counts correct answers on the device and reads one number back (a sync point).
    """
    be, xp = model.be, model.be.xp
    X, y = be.asarray(X), be.asarray(y)
    correct = xp.zeros((), dtype=xp.int64)
    for start in range(0, X.shape[0], EVAL_CHUNK):
        pred = model.predict(X[start : start + EVAL_CHUNK, :])  # (chunk,) on the device
        correct += (pred == y[start : start + EVAL_CHUNK]).sum()
    return int(be.to_numpy(correct)) / max(X.shape[0], 1)


def evaluate_loss(model: MLP, X, y) -> tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` on images X (n, 784) and labels y (n,), host or device.

    Both are summed on the device and read back together: one transfer (a sync point).
    """
    be, xp = model.be, model.be.xp
    X, y = be.asarray(X), be.asarray(y)
    loss, correct = xp.zeros((), dtype=xp.float64), xp.zeros((), dtype=xp.float64)
    for start in range(0, X.shape[0], EVAL_CHUNK):
        yc = y[start : start + EVAL_CHUNK]
        total, A = model.loss_sum(model.inputs(X[start : start + EVAL_CHUNK, :]), model.one_hot(yc))
        loss = loss + total
        correct = correct + (xp.argmax(A, axis=1) == yc).sum()
    loss_sum, n_correct = be.to_numpy(xp.stack([loss, correct]))
    n = max(X.shape[0], 1)
    return float(loss_sum) / n, float(n_correct) / n


class TrainingDiverged(GpumlpError):
    """NaN or Inf in an epoch's loss or parameters; the model is back at the last finite epoch."""

    def __init__(self, epoch: int, loss: float, lr: float):
        super().__init__(f"training diverged in epoch {epoch} (loss {loss}): try a lower --lr than {lr}")
        self.epoch = epoch


@np.errstate(over="ignore", invalid="ignore")  # numpy's overflow warnings: divergence is checked per epoch
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
) -> list[EpochStats]:
    """Mini-batch SGD on host arrays X_train (n, 784) in [0, 1] and y_train (n,) labels, up to
    ``epochs`` epochs in all; returns the per-epoch history.

    ``state`` (updated after every epoch) continues an earlier run exactly. A last partial batch
    is trained on (mean over its real size). On Ctrl-C, or when an epoch ends with NaN or Inf in its
    loss or parameters (``TrainingDiverged``), the parameters are rolled back to the end of the last
    completed epoch, so ``model`` and ``state`` agree, and the exception is re-raised.

    ``on_progress(epoch, batches_done, n_batches, running_loss)``, for a progress display, is
    called about 50 times an epoch; each call reads the running loss from the device.
    """
    state = state if state is not None else TrainState()
    be, xp = model.be, model.be.xp
    dtype = DTYPES[model.dtype]
    X = model.inputs(X_train)  # (n, 784) on the device for the whole run
    Y = model.one_hot(y_train)  # (n, 10)
    has_val = X_val is not None and len(X_val) > 0
    if has_val:
        X_val, y_val = be.asarray(X_val, dtype=dtype), be.asarray(y_val)  # evaluate's predict rescales
    n = X.shape[0]
    rng = shuffle_rng(seed, state.rng_state)
    opt = SGD(lr)
    last_complete = model.theta.copy()  # device copy: the parameters Ctrl-C rolls back to
    progress_every = max(1, -(-n // batch_size) // 50)  # ~50 progress reports an epoch, when asked for
    for epoch in range(state.epochs_done + 1, epochs + 1):
        t0 = time.perf_counter()
        try:
            perm = be.asarray(rng.permutation(n))  # the epoch's one host → device transfer
            report = functools.partial(on_progress, epoch) if on_progress is not None else None
            total = _train_epoch(model, opt, X, Y, perm, batch_size, progress_every, report)
            # The epoch's loss and a checksum of the parameters, in one transfer (a sync point):
            # NaN or Inf in either means training diverged.
            loss_sum, param_sum = be.to_numpy(xp.stack([total, model.theta.sum()]))
            if not (np.isfinite(loss_sum) and np.isfinite(param_sum)):
                raise TrainingDiverged(epoch, float(loss_sum) / n, lr)
            train_loss = float(loss_sum) / n
            train_seconds = time.perf_counter() - t0  # synchronised by the read above
            val_loss, val_acc = evaluate_loss(model, X_val, y_val) if has_val else (None, None)
            be.synchronize()
        except (KeyboardInterrupt, TrainingDiverged):
            model.theta[...] = last_complete  # device → device: back to the last complete epoch
            raise
        last_complete[...] = model.theta
        seconds = time.perf_counter() - t0
        stats = EpochStats(epoch, train_loss, val_acc, seconds, float(lr), int(batch_size), val_loss, n / train_seconds)
        state.epochs_done, state.rng_state = epoch, rng.bit_generator.state
        state.history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return state.history


def _train_epoch(model: MLP, opt: SGD, X, Y, perm, batch_size: int, progress_every: int, report=None):
    """One pass of mini-batch SGD over the device arrays X (n, 784), Y (n, 10) in the order of the
    device permutation ``perm`` (n,). Returns the summed loss as a device scalar: no sync, except
    ``report(batches_done, n_batches, running_mean_loss)`` every ``progress_every`` batches when given."""
    be, xp = model.be, model.be.xp
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    total = xp.zeros((), dtype=model.theta.dtype)  # summed loss, accumulated on the device
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size]  # (b,) a view, no copy
        Xb = X.take(idx, axis=0)  # (b, 784)
        Yb = Y.take(idx, axis=0)  # (b, 10)
        total = total + model.batch_loss_and_grads(Xb, Yb)  # fills model.grad; not +=: on numpy
        # a scalar sum skips a 0-d array write, ~2 µs of a ~70 µs batch-10 step
        opt.step(model.theta, model.grad)
        done = start // batch_size + 1
        if report is not None and done % progress_every == 0:  # a sync point, for a progress display only
            report(done, n_batches, float(be.to_numpy(total)) / min(n, done * batch_size))
    return total


@dataclass
class RunResult:
    model: MLP
    history: list[EpochStats]
    test_accuracy: float | None  # None when --test-size is 0
    checkpoint: Path | None


class TrainingInterrupted(Exception):
    """Ctrl-C during ``run``: the last completed epoch was saved to ``checkpoint``."""

    def __init__(self, checkpoint: Path | None, epochs_done: int, resume_command: str):
        super().__init__(f"interrupted after epoch {epochs_done}")
        self.checkpoint, self.epochs_done, self.resume_command = checkpoint, epochs_done, resume_command


def metrics_path(checkpoint_path: Path) -> Path:
    """``checkpoints/run.npz`` → ``checkpoints/run.metrics.jsonl`` (readable by pandas.read_json(lines=True))."""
    return checkpoint_path.with_name(checkpoint_path.stem + ".metrics.jsonl")


def default_checkpoint(cfg: TrainConfig) -> Path:
    """``checkpoints/784-16-16-10-sigmoid-mse.npz`` for the reference network."""
    return Path("checkpoints") / f"{'-'.join(map(str, cfg.sizes))}-{cfg.activation}-{cfg.loss}.npz"


# Options a resumed run must keep: they define the network, its data and its random streams.
FIXED_ON_RESUME = ("sizes", "activation", "loss", "init", "dtype", "train_size", "val_size", "seed")


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    """The configuration of a resumed run: the checkpoint's, with ``overrides`` (the options the
    user gave) applied. Overrides that contradict a fixed option are refused."""
    for key, value in overrides.items():
        if key in FIXED_ON_RESUME and saved.get(key) is not None:
            new = TrainConfig(**{**saved, key: value}).to_dict()[key]  # normalised, e.g. "784,10"
            if new != saved[key]:
                option = "--layers" if key == "sizes" else f"--{key.replace('_', '-')}"
                raise ConfigError(
                    f"{option} {value} contradicts the checkpoint ({saved[key]}); a resumed run keeps "
                    f"{option}: drop it, or start a new run without --resume"
                )
    try:
        return TrainConfig(**{**saved, **overrides})
    except TypeError as e:
        raise ConfigError(f"the checkpoint's training configuration is unusable ({e})") from None


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
    on Ctrl-C (then ``TrainingInterrupted`` is raised). Beside the checkpoint, ``<name>.metrics.jsonl``
    gets one JSON line per epoch, rewritten as each epoch ends (a resumed run's file starts with the
    checkpoint's history)."""
    default = Path(resume) if resume else default_checkpoint(cfg)
    path = None if save is False else checkpoint.check_writable(save or default)
    if resume:
        model, meta = checkpoint.load(resume, device=cfg.device)
        state = TrainState.from_metadata(meta)
        if state.epochs_done >= cfg.epochs:
            raise ConfigError(
                f"{resume} already has {state.epochs_done} epochs; pass --epochs above {state.epochs_done} to continue"
            )
    else:
        model = MLP(cfg.sizes, cfg.activation, cfg.loss, cfg.init, cfg.seed, cfg.device, cfg.dtype)
        state = TrainState()
    if model.be.note:
        log(model.be.note)
    data = load_mnist(data_dir)
    (X_tr, y_tr), (X_val, y_val), (X_te, y_te) = split(*data, cfg.train_size, cfg.val_size, cfg.test_size)
    start = f"from epoch {state.epochs_done} of {resume}, " if resume else ""
    log(
        f"training {model} on {len(X_tr)} images ({len(X_val)} for validation), {start}"
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, lr {cfg.lr}"
    )

    def write(test_accuracy=None):
        if path is not None:
            checkpoint.save(
                path, model, config=cfg.to_dict(), history=[asdict(e) for e in state.history],
                train_state=state.to_dict(), optimizer={"name": "sgd", "state": {}}, mnist_sha256=MNIST_FILES,
                test_accuracy=test_accuracy, test_size=len(X_te) if test_accuracy is not None else 0,
            )  # fmt: skip

    metrics = None if path is None else metrics_path(path)

    def after_epoch(stats: EpochStats) -> None:
        if metrics is not None:  # the whole history each time: it and the checkpoint's always agree
            metrics.parent.mkdir(parents=True, exist_ok=True)
            metrics.write_text("".join(json.dumps(asdict(e)) + "\n" for e in state.history))
        if on_epoch is not None:
            on_epoch(stats)
        if save_every and stats.epoch % save_every == 0 and stats.epoch < cfg.epochs:
            write()

    fit_args = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    try:
        fit(
            model, X_tr, y_tr, **fit_args, X_val=X_val, y_val=y_val, on_epoch=after_epoch, state=state,
            on_progress=on_progress,
        )  # fmt: skip
    except TrainingDiverged as e:
        if state.epochs_done > 0:
            write()
            raise GpumlpError(f"{e}; saved the last finite epoch ({state.epochs_done}) to {path}") from None
        raise GpumlpError(f"{e}; nothing saved") from None
    except KeyboardInterrupt:
        if state.epochs_done > 0 or resume:
            write()
        command = f"gpumlp train --resume {path} --epochs {cfg.epochs}" if path and state.epochs_done else ""
        raise TrainingInterrupted(path if state.epochs_done else None, state.epochs_done, command) from None
    test_acc = evaluate(model, X_te, y_te) if len(X_te) else None  # the only look at the test set
    write(test_acc)
    return RunResult(model, state.history, test_acc, path)
