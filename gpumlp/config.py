"""What defines a training run: ``TrainConfig`` (every option, with a comment on its default),
its checks, the options a resumed run must keep, and the one-line summary runs print."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gpumlp.augment import AugmentConfig, parse_kinds
from gpumlp.errors import ConfigError
from gpumlp.model import DTYPES, parse_sizes
from gpumlp.optim import OPTIMIZERS, SCHEDULES


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the Rust project's reference row."""

    sizes: tuple[int, ...] = (784, 16, 16, 10)  # layer sizes: 784 inputs … 10 classes
    activation: str = "sigmoid"  # hidden layers: sigmoid, relu or tanh
    loss: str = "mse"  # mse: sigmoid outputs + ½‖a−y‖²; ce: softmax + cross-entropy
    init: str | None = None  # normal, lecun, he, xavier; None: the activation's default
    epochs: int = 30  # passes over the training images
    batch_size: int = 10  # images per step (mean loss over the batch)
    lr: float = 3.0  # learning rate η (the peak, with a schedule)
    train_size: int = 50_000  # images from the start of the training file
    val_size: int = 10_000  # images right after them, for validation after each epoch
    test_size: int = 10_000  # images from the start of the test file, read once at the end
    seed: int = 0  # initial weights, epoch permutations, dropout masks and augmentation
    dtype: str = "float32"  # float32 or float64
    device: str = "cpu"  # auto, cpu, cuda or cuda:N
    # -- the update rule
    optimizer: str = "sgd"  # sgd, momentum, nesterov or adam
    momentum: float = 0.9  # μ of momentum and nesterov
    beta1: float = 0.9  # Adam's decay of the first moment
    beta2: float = 0.999  # Adam's decay of the second moment
    eps: float = 1e-8  # Adam's ε
    # -- regularisation
    weight_decay: float = 0.0  # L2: the loss gains ½λΣ‖W‖² (weights, not biases)
    dropout: float = 0.0  # probability of dropping each hidden unit in training (inverted dropout)
    max_norm: float = 0.0  # cap on each unit's incoming weight-vector norm after every step; 0: off
    # -- learning-rate schedule, per epoch
    schedule: str = "constant"  # constant, step (×gamma every step_size epochs) or cosine (to 0)
    warmup: int = 0  # epochs of linear warm-up before the schedule starts
    step_size: int = 10  # epochs between the step schedule's decays
    gamma: float = 0.1  # the step schedule's decay factor
    # -- early stopping
    patience: int = 0  # stop after this many epochs without a better validation score; 0: off
    monitor: str = "accuracy"  # the validation score early stopping watches: accuracy or loss
    # -- augmentation of training batches (never of validation or test images)
    augment: str = "none"  # none, shift, affine, elastic, or a comma list such as affine,elastic
    shift: float = 2.0  # max translation, pixels
    rotate: float = 10.0  # max rotation, degrees
    scale: float = 0.1  # max relative scaling
    shear: float = 0.1  # max shear
    elastic_alpha: float = 34.0  # elastic displacement intensity, pixels (Simard et al. 2003)
    elastic_sigma: float = 4.0  # elastic smoothness, pixels
    preset: str | None = None  # the preset these options started from, for the record

    def __post_init__(self):
        self.sizes = parse_sizes(self.sizes)
        self._check_recipe()
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

    def _check_recipe(self):
        for name, options in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("monitor", MONITORS)):
            if getattr(self, name) not in options:
                raise ConfigError(f"unknown --{name} {getattr(self, name)!r}: choose one of {', '.join(options)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), e.g. 0.5 (got {self.dropout})")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), e.g. 0.9 (got {self.momentum})")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1) (got {getattr(self, name)})")
        for name in ("eps", "gamma"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive (got {getattr(self, name)})")
        for name in ("weight_decay", "max_norm", "warmup", "patience"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if self.step_size < 1:
            raise ConfigError(f"--step-size must be at least 1 epoch (got {self.step_size})")
        if self.patience and not self.val_size:
            raise ConfigError(PATIENCE_NEEDS_VAL)
        self.augment = ",".join(parse_kinds(self.augment)) or "none"
        augment_config(self.recipe())  # checks the strengths

    def recipe(self) -> dict:
        """The options ``fit`` takes beyond epochs, batch size, lr and seed."""
        return {k: getattr(self, k) for k in RECIPE}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


MONITORS = ("accuracy", "loss")
PATIENCE_NEEDS_VAL = "--patience needs validation images: give --val-size above 0, or --patience 0"
# TrainConfig fields that fit() takes as its recipe.
RECIPE = (
    "optimizer", "momentum", "beta1", "beta2", "eps", "weight_decay", "dropout", "max_norm", "schedule",
    "warmup", "step_size", "gamma", "patience", "monitor", "augment", "shift", "rotate", "scale", "shear",
    "elastic_alpha", "elastic_sigma",
)  # fmt: skip


DEFAULT_RECIPE = {k: TrainConfig.__dataclass_fields__[k].default for k in RECIPE}


def augment_config(r: dict) -> AugmentConfig:
    """The augmentation options of a recipe (``TrainConfig.recipe()``) as an ``AugmentConfig``."""
    kinds = () if r["augment"] == "none" else parse_kinds(r["augment"])
    return AugmentConfig(kinds, r["shift"], r["rotate"], r["scale"], r["shear"], r["elastic_alpha"], r["elastic_sigma"])


def describe_recipe(cfg: TrainConfig) -> str:
    """``"adam lr 0.001 (cosine, 2 warm-up epochs), dropout 0.5, augment elastic"``: the options in use."""
    sched = [cfg.schedule] if cfg.schedule != "constant" else []
    if cfg.warmup:
        sched.append(f"{cfg.warmup} warm-up epoch" + ("s" if cfg.warmup != 1 else ""))
    parts = [f"{cfg.optimizer} lr {cfg.lr:g}" + (f" ({', '.join(sched)})" if sched else "")]
    for name, value in (("weight decay", cfg.weight_decay), ("dropout", cfg.dropout), ("max-norm", cfg.max_norm)):
        if value:
            parts.append(f"{name} {value:g}")
    if cfg.augment != "none":
        parts.append(f"augment {cfg.augment}")
    if cfg.patience:
        parts.append(f"early stopping on val {cfg.monitor} (patience {cfg.patience})")
    return ", ".join(parts)


def default_checkpoint(cfg: TrainConfig) -> Path:
    """``checkpoints/784-16-16-10-sigmoid-mse.npz`` for the reference network; presets prefix their name."""
    prefix = f"{cfg.preset}-" if cfg.preset else ""
    return Path("checkpoints") / f"{prefix}{'-'.join(map(str, cfg.sizes))}-{cfg.activation}-{cfg.loss}.npz"


# Options a resumed run must keep: they define the network, its data and its random streams.
FIXED_ON_RESUME = ("sizes", "activation", "loss", "init", "dtype", "train_size", "val_size", "seed", "optimizer")


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
