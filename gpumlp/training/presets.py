"""Presets: documented bundles of training options, picked with ``gpumlp train --preset NAME``.

Options given explicitly on the command line (or to ``gpumlp.training.config.preset_config``) override the preset's.
Every hyper-parameter below was chosen on the validation split (the 10000 training-file images
after the first 50000); the test set is read once, at the end of a run. How each was measured,
and what it reached, is in the README's results table (``scripts/reproduce.py``).
"""

from __future__ import annotations

from gpumlp.errors import ConfigError

PRESETS: dict[str, dict] = {
    # The Rust project's reference row: 784-16-16-10, sigmoid, quadratic cost, batch 10, η = 3.0,
    # 10000 training images, 30 epochs (91.9% there, in 478 s).
    "seed": dict(
        sizes=(784, 16, 16, 10), activation="sigmoid", loss="mse", batch_size=10, lr=3.0, train_size=10_000, epochs=30
    ),
    # The shortest time to ≥ 98% test accuracy on a 2-core CPU: one wide ReLU layer, softmax and
    # cross-entropy, Nesterov momentum at a large batch, and a cosine schedule that ends each run
    # at a small learning rate. Validation accuracy after 3 epochs, seeds 0/1/2: 98.13/98.17/98.10%
    # on 2 BLAS threads, 97.93/98.16/98.05% on 1 (the products round differently; 2026-11-27).
    # Smaller recipes, same seeds (1 thread; 480 on 2): 784-480-10 98.03/98.20/98.02%,
    # 784-384-10 98.02/97.90/98.04%, 784-256-10 97.99/97.88/97.93%, 2 epochs 97.49/97.59/97.56%,
    # batch 256 lr 0.2 97.98/97.93/98.09%
    # (earlier: μ 0.9 and lr 0.3 98.07/98.18/97.91%; 784-256-10 needs 4 epochs for the same).
    "fast": dict(
        sizes=(784, 512, 10),
        activation="relu",
        loss="ce",
        optimizer="nesterov",
        momentum=0.95,
        batch_size=128,
        lr=0.15,
        epochs=3,
        schedule="cosine",
    ),
    # The highest MLP-only accuracy within 15 minutes on a 2-core CPU: two wide ReLU layers with
    # light dropout and max-norm (Srivastava et al. 2014), trained on distorted digits (random affine
    # maps and elastic distortions, Simard et al. 2003), Nesterov momentum and a cosine schedule.
    # Chosen on validation accuracy after 30-epoch trials (seed 0): dropout 0.25 with σ 4 distortions
    # 98.93%, dropout 0.1 with σ 6 (smoother, milder) 99.15%, elastic alone 99.14%, 784-800-10 98.92%;
    # the same as 90 epochs (dropout 0.25, σ 4) reached 99.16%. 784-800-800-10 trained at about
    # 6,300 images/s here with these options (7,400 after the BLAS updates), so 90 epochs of 50000
    # images take 10–12 minutes.
    "best": dict(
        sizes=(784, 800, 800, 10),
        activation="relu",
        loss="ce",
        optimizer="nesterov",
        momentum=0.9,
        batch_size=128,
        lr=0.05,
        epochs=90,
        schedule="cosine",
        warmup=1,
        dropout=0.1,
        max_norm=4.0,
        augment="affine,elastic",
        elastic_sigma=6.0,
    ),
}


# What ``gpumlp.fit`` trains with when the caller gives no ``lr`` (nor ``optimizer``): the first row
# whose activation and loss are the model's (None: any), a preset's recipe with changes. Measured on
# 784-100-10, seed 0, validation accuracy after 3 epochs (``fast``: its whole run): tanh/ce 97.27%,
# sigmoid/ce 96.51% with fast's recipe; with seed's at lr 1.0, tanh/mse 96.67% and relu/mse
# 96.71% (at its lr 3.0, which suits sigmoid units: 30.04% and 92.06%).
FIT_RECIPES: list[tuple[str | None, str | None, str, dict]] = [
    (None, "ce", "fast", {}),
    ("sigmoid", "mse", "seed", {}),
    (None, "mse", "seed", {"lr": 1.0}),
    (None, None, "seed", {}),  # a loss registered later: TrainConfig's defaults, the seed's recipe
]
NOT_RECIPE = ("sizes", "activation", "loss", "train_size")  # what a preset says about the network and data


def fit_recipe(activation: str, loss: str) -> tuple[str, dict]:
    """``(preset name, options)``: the recipe ``gpumlp.fit`` uses for a model of ``activation`` and
    ``loss`` when its caller chooses none (``FIT_RECIPES``): epochs, batch size, lr, update rule,
    schedule, … of that preset, without its network and data options."""
    for act, los, name, changes in FIT_RECIPES:
        if act in (None, activation) and los in (None, loss):
            options = {k: v for k, v in PRESETS[name].items() if k not in NOT_RECIPE}
            return name, {**options, **changes}
    raise AssertionError("FIT_RECIPES ends with a row for any model")


def preset_options(name: str) -> dict:
    """The options of preset ``name`` (a copy), plus ``preset=name`` for the record."""
    if name not in PRESETS:
        raise ConfigError(f"unknown --preset {name!r}: choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name], preset=name)
