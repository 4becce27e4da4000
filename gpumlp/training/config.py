"""What defines a training run: ``TrainConfig`` (every option, with a comment on its default),
its checks, the options a resumed run must keep, and the one-line summary runs print."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from gpumlp import activations, losses, optim
from gpumlp.data import datasets
from gpumlp.errors import ConfigError
from gpumlp.training.presets import PRESETS, preset_options

# numpy and the modules that need it are imported by the checks, on first use: `gpumlp --help`
# builds the train command's options from TrainConfig and should not wait for numpy (datasets,
# activations, losses and optim, read here for names, defaults and help texts, do not import it).


def option(default, help: str | Callable[[], str], panel: str | None = None, **cli):
    """A ``TrainConfig`` field: its default, and the help text (or a function making it from the
    records registered when the help is shown: losses, update rules; ``help_of``) and panel of its
    ``gpumlp train`` option, declared here once (``cli/app.py`` builds the command's options from
    these fields).
    ``cli`` may hold ``name`` (the option's name when it differs from the field's), ``flags``
    (extra short flags), ``cli_type``/``cli_default`` (what the command line types, e.g. "784,16,16,10"),
    and ``choices``: a function returning the names the value is one of (the record the checks use),
    which shell completion offers (``listed``: a comma list of them, as ``--augment``)."""
    return field(default=default, metadata={"help": help, "panel": panel, **cli})


RECIPE_PANEL, AUGMENT_PANEL = "Recipe", "Augmentation"


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults reproduce the Rust project's reference row.
    The update rules' hyper-parameters are fields too, generated from gpumlp/optim.py (``_generate``)."""

    sizes: tuple[int, ...] = option(
        (784, 16, 16, 10), "Layer sizes, 784 inputs first and 10 classes last, e.g. 784,100,10 or '784 100 10'.",
        name="layers", cli_type=str, cli_default="784,16,16,10",
    )  # fmt: skip
    activation: str = option(
        "sigmoid", lambda: f"Hidden activation: {activations.choices()} (gpumlp/activations.py).",
        choices=lambda: activations.ACTIVATIONS,
    )  # fmt: skip
    loss: str = option(
        "mse", lambda: f"Output and loss: {losses.help_text()} (gpumlp/losses.py).", choices=lambda: losses.LOSSES
    )
    init: str | None = option(
        None, lambda: f"Weights: normal N(0,1), lecun, he or xavier. Default: {activations.default_inits()}.",
        choices=lambda: _model_names("INITS"),
    )  # fmt: skip
    epochs: int = option(30, "Passes over the training images.")
    batch_size: int = option(10, "Images per step; the loss is their mean.")
    lr: float = option(3.0, "Learning rate η (the peak, with a schedule).")
    train_size: int = option(50_000, "Training images, from the start of the training file.")
    val_size: int = option(10_000, "Validation images, right after the training images (0: none).")
    test_size: int = option(10_000, "Test images, from the start of the test file (0: no test).")
    dataset: str = option(
        "mnist",
        lambda: f"The images: {datasets.choices()} (gpumlp/data/datasets.py).",
        choices=lambda: datasets.DATASETS,
    )
    seed: int = option(0, "Seed of the initial weights, the batch order, dropout masks and distortions.")
    dtype: str = option("float32", "float32 or float64.", choices=lambda: _model_names("DTYPES"))
    device: str = option(
        "cpu", "auto, cpu, cuda or cuda:N (auto: CUDA if usable, else CPU).", flags=("-d",), choices=lambda: _devices()
    )
    # -- the update rule
    optimizer: str = option(
        "sgd", lambda: f"Update rule: {', '.join(optim.RULES)} (gpumlp/optim.py).", RECIPE_PANEL,
        choices=lambda: optim.RULES,
    )  # fmt: skip
    # here, generated: one float field per name in optim.HYPERPARAMS (momentum, beta1, beta2, eps, …);
    # each rule takes its own and ignores the others
    # -- regularisation
    weight_decay: float = option(0.0, "L2 penalty λ: the loss gains ½λΣ‖W‖² (weights only).", RECIPE_PANEL)
    dropout: float = option(0.0, "Probability of dropping each hidden unit while training.", RECIPE_PANEL)
    max_norm: float = option(0.0, "Cap on each unit's incoming weight norm after every step (0: off).", RECIPE_PANEL)
    # -- learning-rate schedule, per epoch
    schedule: str = option(
        "constant", "Learning rate per epoch: constant, step or cosine (to 0).", RECIPE_PANEL,
        choices=lambda: optim.SCHEDULES,
    )  # fmt: skip
    warmup: int = option(0, "Epochs of linear lr warm-up first.", RECIPE_PANEL)
    step_size: int = option(10, "step schedule: epochs per decay.", RECIPE_PANEL)
    gamma: float = option(0.1, "step schedule: the decay factor.", RECIPE_PANEL)
    # -- early stopping
    patience: int = option(
        0, "Early stopping: stop after K epochs without a better validation score and keep the best epoch's "
        "weights (0: off).", RECIPE_PANEL,
    )  # fmt: skip
    monitor: str = option(
        "accuracy", "What early stopping watches: accuracy or loss.", RECIPE_PANEL, choices=lambda: MONITORS
    )
    # -- augmentation of training batches (never of validation or test images)
    augment: str = option(
        "none",
        "Distort training digits: none, shift, affine, elastic, or a list such as affine,elastic.",
        AUGMENT_PANEL, choices=lambda: _augment_kinds(), listed=True,
    )  # fmt: skip
    shift: float = option(2.0, "Max translation, pixels.", AUGMENT_PANEL)
    rotate: float = option(10.0, "Max rotation, degrees.", AUGMENT_PANEL)
    scale: float = option(0.1, "Max relative scaling.", AUGMENT_PANEL)
    shear: float = option(0.1, "Max shear.", AUGMENT_PANEL)
    elastic_alpha: float = option(34.0, "Elastic distortion intensity, pixels (Simard et al. 2003).", AUGMENT_PANEL)
    elastic_sigma: float = option(4.0, "Elastic distortion smoothness, pixels.", AUGMENT_PANEL)
    # -- how a step runs (never what it computes)
    cuda_graph: bool = option(
        False, lambda: "CUDA only: capture the training step once as a CUDA graph and replay it, one launch per "
        f"batch ({', '.join(k for k, r in optim.RULES.items() if not r.graph_refusal)}; no dropout or "
        "augmentation). Ignored on the CPU, with a note.", RECIPE_PANEL,
    )  # fmt: skip
    preset: str | None = option(
        None, "seed (the Rust project's reference row), fast (≥ 98% in seconds) or best (highest accuracy, "
        "about 8 min on 2 cores): a bundle of the options here; options you give override it.", RECIPE_PANEL,
        choices=lambda: PRESETS,
    )  # fmt: skip

    def __post_init__(self):
        from gpumlp.model import DTYPES, parse_sizes

        self._check_types()
        self.sizes = parse_sizes(self.sizes)
        self._check_recipe()
        for name in ("epochs", "batch_size", "train_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        for name in ("val_size", "test_size", "seed"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"--lr must be a positive finite number, e.g. 3.0 (got {self.lr})")
        if self.batch_size > self.train_size:
            raise ConfigError(
                f"--batch-size {self.batch_size} is larger than --train-size {self.train_size}; "
                "use a smaller batch or more training images"
            )
        datasets.get(self.dataset)  # a name gpumlp/data/datasets.py has a record of
        losses.get(self.loss)  # a name registered in gpumlp/losses.py when the run is configured
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}: choose one of {', '.join(DTYPES)}")

    def _check_types(self):
        """Whole numbers where the field is an int, finite numbers where it is a float, a flag where a bool."""
        import numpy as np

        for f in fields(self):
            value, option = getattr(self, f.name), f"--{f.metadata.get('name', f.name).replace('_', '-')}"
            if f.type == "bool":
                if not isinstance(value, (bool, np.bool_)):
                    raise ConfigError(f"{option} is a flag: true or false (got {value!r})")
                setattr(self, f.name, bool(value))
            if f.type not in ("int", "float"):
                continue
            number = isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy's numbers too
            # an int is never turned into a float to be checked: 10**400 would be an OverflowError
            whole = isinstance(value, numbers.Integral) or (number and float(value).is_integer())
            if f.type == "int" and not (number and whole):
                raise ConfigError(f"{option} must be a whole number (got {value!r})")
            if f.type == "int" and not -MAX_INT <= int(value) <= MAX_INT:  # numpy's int64, every index and count
                raise ConfigError(f"{option} must be at most {MAX_INT:,} (got {short_number(value)})")
            if f.type == "float" and not (number and _finite(value)):
                raise ConfigError(f"{option} must be a finite number (got {short_number(value)})")
            setattr(self, f.name, int(value) if f.type == "int" else float(value))

    def _check_recipe(self):
        from gpumlp.training.augment import parse_kinds

        for name, options in (("optimizer", optim.RULES), ("schedule", optim.SCHEDULES), ("monitor", MONITORS)):
            if getattr(self, name) not in options:
                raise ConfigError(f"unknown --{name} {getattr(self, name)!r}: choose one of {', '.join(options)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1), e.g. 0.5 (got {self.dropout})")
        for name, hyper in optim.HYPERPARAMS.items():
            hyper.check(name, getattr(self, name))
        if not self.gamma > 0:
            raise ConfigError(f"--gamma must be positive (got {self.gamma})")
        for name in ("weight_decay", "max_norm", "warmup", "patience"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more (got {getattr(self, name)})")
        if self.step_size < 1:
            raise ConfigError(f"--step-size must be at least 1 epoch (got {self.step_size})")
        if self.patience and not self.val_size:
            raise ConfigError(PATIENCE_NEEDS_VAL)
        self.augment = ",".join(parse_kinds(self.augment)) or "none"
        augment_config(self.recipe())  # checks the strengths
        if self.cuda_graph:
            from gpumlp.backends.graph import refusal

            why = refusal(self.recipe(), optim.RULES[self.optimizer])
            if why:
                raise ConfigError(why)

    def recipe(self) -> dict:
        """The options ``fit`` takes beyond epochs, batch size, lr and seed."""
        return {k: getattr(self, k) for k in RECIPE}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sizes"] = list(self.sizes)
        return d


def option_name(f) -> str:
    """The command line's name of ``TrainConfig`` field ``f`` (a field or its name), without ``--``:
    ``batch-size`` for ``batch_size``, ``layers`` for ``sizes``."""
    f = f if not isinstance(f, str) else TrainConfig.__dataclass_fields__[f]
    return f.metadata.get("name", f.name).replace("_", "-")


def help_of(f) -> str:
    """The help text of ``TrainConfig`` field ``f``'s option, made now: a help that names registered
    records (``--loss``, ``--optimizer``) lists those registered when it is shown."""
    help = f.metadata["help"]
    return help() if callable(help) else help


def fields_by_option() -> dict[str, str]:
    """``{"layers": "sizes", "batch-size": "batch_size", …}``: every ``TrainConfig`` field by the
    name ``gpumlp train`` spells its option (the keys of a config or sweep-space file), with the
    update rules registered now."""
    return {option_name(f): f.name for f in fields(TrainConfig)}


MAX_INT = 2**63 - 1  # the largest whole-number option: what numpy's int64 holds


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float (10**400)
        return False


def short_number(value) -> str:
    """``repr(value)``, or for a whole number too long to print in one line, its size."""
    if isinstance(value, numbers.Integral) and abs(int(value)) > MAX_INT:
        return f"a whole number of {abs(int(value)).bit_length()} bits"
    return repr(value)


def check_network_names(cfg: TrainConfig) -> TrainConfig:
    """Refuse an ``activation`` or ``init`` the network does not know, as ``MLP`` would when the
    run starts: a config or space file's mistake is then said with the file's name, at once."""
    from gpumlp.activations import ACTIVATIONS
    from gpumlp.model import INITS

    for name, value, known in (("activation", cfg.activation, ACTIVATIONS), ("init", cfg.init, INITS)):
        if value is not None and value not in known:
            raise ConfigError(f"unknown --{name} {value!r}: choose one of {', '.join(known)}")
    return cfg


MONITORS = ("accuracy", "loss")


# The choices whose records import numpy, read only when a shell asks for completions.
def _model_names(name: str):
    from gpumlp import model

    return getattr(model, name)  # INITS, or DTYPES


def _devices() -> tuple[str, ...]:
    from gpumlp.backends.registry import device_names

    return device_names()


def _augment_kinds() -> tuple[str, ...]:
    from gpumlp.training.augment import KINDS

    return ("none", *KINDS)


PATIENCE_NEEDS_VAL = "--patience needs validation images: give --val-size above 0, or --patience 0"
DECLARED = {f.name: f for f in fields(TrainConfig)}  # the fields above; _generate adds the rules'
# TrainConfig fields that fit() takes as its recipe (the options of the recipe and augmentation
# panels), and their defaults: updated in place by _generate, so importers see a registered rule's.
RECIPE: list[str] = []
DEFAULT_RECIPE: dict = {}


def _generate() -> None:
    """Make TrainConfig's fields: the declared ones (``DECLARED``), with one float field per update
    rule hyper-parameter (``optim.HYPERPARAMS``) after ``optimizer``. At import, and again whenever
    ``optim.register`` changes the rules; in place, since other modules hold TrainConfig by name."""
    for k in set(optim.HYPERPARAMS) & set(DECLARED):
        rule = next(r.name for r in optim.RULES.values() if k in r.hyperparams)
        raise ConfigError(f"update rule {rule!r}: its hyper-parameter {k!r} is already a TrainConfig option; rename it")
    specs = {}  # name: (type, Field), in TrainConfig's order
    for name, f in DECLARED.items():
        specs[name] = (f.type, field(default=f.default, metadata=f.metadata))
        if name == "optimizer":
            specs.update({k: ("float", option(h.default, h.help, RECIPE_PANEL)) for k, h in optim.HYPERPARAMS.items()})
    for name in (*TrainConfig.__dataclass_fields__, *DATACLASS_MADE):  # undo the last dataclass()
        if name in vars(TrainConfig):
            delattr(TrainConfig, name)
    TrainConfig.__annotations__ = {k: t for k, (t, _) in specs.items()}
    for k, (_, f) in specs.items():
        setattr(TrainConfig, k, f)
    dataclass(TrainConfig)
    RECIPE[:] = [k for k, (_, f) in specs.items() if f.metadata["panel"] in (RECIPE_PANEL, AUGMENT_PANEL)]
    RECIPE.remove("preset")
    DEFAULT_RECIPE.clear()
    DEFAULT_RECIPE.update({k: specs[k][1].default for k in RECIPE})


# What dataclass() adds to a class beyond its fields' defaults (__replace__ from Python 3.13).
DATACLASS_MADE = ("__init__", "__repr__", "__eq__", "__hash__", "__match_args__", "__replace__",
                  "__dataclass_fields__", "__dataclass_params__")  # fmt: skip
_generate()
optim.REBUILDS.append(_generate)


def preset_config(name: str | None, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from preset ``name`` (None: the defaults) with ``overrides`` on top."""
    return TrainConfig(**{**(preset_options(name) if name else {}), **overrides})


def augment_config(r: dict):
    """The augmentation options of a recipe (``TrainConfig.recipe()``) as an ``AugmentConfig``."""
    from gpumlp.training.augment import AugmentConfig, parse_kinds

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
    if cfg.cuda_graph:
        parts.append("CUDA graph")
    return ", ".join(parts)


def default_checkpoint(cfg: TrainConfig) -> Path:
    """``checkpoints/784-16-16-10-sigmoid-mse.npz`` for the reference network; presets prefix their name."""
    prefix = f"{cfg.preset}-" if cfg.preset else ""
    return Path("checkpoints") / f"{prefix}{'-'.join(map(str, cfg.sizes))}-{cfg.activation}-{cfg.loss}.npz"


# Options a resumed run must keep: they define the network, its data and its random streams.
FIXED_ON_RESUME = (
    "sizes", "activation", "loss", "init", "dtype", "dataset", "train_size", "val_size", "seed", "optimizer",
)  # fmt: skip
# Fixed options that older checkpoints may lack: the default (mnist) or the activation's init stands in.
IMPLIED_ON_RESUME = ("init", "dataset")


def _effective(key: str, config: dict):
    """The value of ``key`` a run with ``config`` uses: normalised (``"784,10"`` → [784, 10]), and
    for ``init`` the activation's default in place of None."""
    if key == "init" and config.get("init") is None:
        act = activations.ACTIVATIONS.get(config.get("activation", TrainConfig.activation))
        return act.default_init if act is not None else None
    return TrainConfig(**config).to_dict()[key]


def resume_config(saved: dict, overrides: dict) -> TrainConfig:
    """The configuration of a resumed run: the checkpoint's, with ``overrides`` (the options the
    user gave) applied. Overrides that contradict a fixed option are refused."""
    for key, value in overrides.items():
        if key in FIXED_ON_RESUME and (key in IMPLIED_ON_RESUME or saved.get(key) is not None):
            new, old = _effective(key, {**saved, key: value}), _effective(key, saved)
            if new != old:
                option = "--layers" if key == "sizes" else f"--{key.replace('_', '-')}"
                if key == "sizes" and not isinstance(value, str):  # (784, 30, 10) from a config file
                    value = ",".join(map(str, value))
                raise ConfigError(
                    f"{option} {value} contradicts the checkpoint ({old}); a resumed run keeps "
                    f"{option}: drop it, or start a new run without --resume"
                )
    if saved.get("optimizer") is not None and saved["optimizer"] not in optim.RULES:
        raise ConfigError(
            f"the checkpoint was trained with --optimizer {saved['optimizer']}, which no registered update rule "
            "provides; register its rule (gpumlp.optim.register) to resume it, or start a new run"
        )
    try:
        return TrainConfig(**{**saved, **overrides})
    except TypeError as e:
        raise ConfigError(f"the checkpoint's training configuration is unusable ({e})") from None
