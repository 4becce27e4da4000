"""Update rules, their state, learning-rate schedules and the max-norm constraint.

Every optimiser updates the flat parameter vector ``theta`` (n_params,) in place from the flat
gradient ``grad`` (n_params,) of the mean batch loss, on the device, with a handful of whole-buffer
operations per step and no host sync. Its state (velocity, moments) lives in buffers of the same
layout, which ``state()`` hands over for checkpoints and ``load_state()`` takes back for exact resume.

Weight decay is L2 regularisation: the loss gains ½·λ·Σ‖W‖² over the weight matrices (not the
biases), so each dW gains λ·W before the update rule sees it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpumlp.errors import ConfigError

# numpy and gpumlp.model are imported on first use: gpumlp/training/config.py reads the hyper-parameters
# below to build `gpumlp train`'s options, and `gpumlp --help` should not wait for numpy.

SCHEDULES = ("constant", "step", "cosine")
# A weight matrix with at least this many entries has SGD's step folded into backward's product
# (``fused_update``). Below it the extra BLAS call costs more than the passes it saves.
# Measured: docs/speed.md#fused-sgd-step-threshold
FUSE_MIN_WEIGHTS = 1 << 14


@dataclass(frozen=True)
class Hyper:
    """A hyper-parameter of an update rule: its default, its help text (``gpumlp train``'s option
    of the same name is built from both, in gpumlp/training/config.py) and the range it must lie in."""

    default: float
    help: str
    below_one: bool = False  # True: in [0, 1), a decay rate; False: positive

    def check(self, name: str, value: float) -> float:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not (number and (0 <= value < 1 if self.below_one else value > 0)):
            raise ConfigError(f"--{name} must be {self.need}, e.g. {self.default:g} (got {value!r})")
        return float(value)

    @property
    def need(self) -> str:
        return "in [0, 1)" if self.below_one else "positive"


MOMENTUM = {"momentum": Hyper(0.9, "μ of momentum and nesterov.", below_one=True)}


class Optimizer:
    """The common part: weight decay, the step counter and the state buffers.

    A rule is one subclass (then ``register`` it): its ``name`` (``--optimizer``), its ``hyperparams``
    (``TrainConfig``'s fields and ``gpumlp train``'s options are generated from them), its state
    ``buffers``, the readable update ``_update``, the same math as one fused CUDA kernel, ``cuda``
    (``(in_params, out_params, body)`` for ``cupy.ElementwiseKernel``, see ``gpumlp.backends.kernels``;
    ``g, wd`` and the ``kernel_scalars`` in, ``p`` and the buffers out) and its ``graph_refusal``."""

    name = "sgd"
    hyperparams: dict[str, Hyper] = {}  # the rule's hyper-parameters beyond the learning rate
    graph_refusal: str | None = None  # why --cuda-graph cannot replay a step (kernel_scalars change), or None
    buffers: tuple[str, ...] = ()  # names of the state buffers, each shaped like theta
    fusable = False  # whether the step of a weight matrix can be one product in backward (SGD)
    scratch = False  # whether the rule needs a scratch buffer shaped like theta (Adam)
    cuda: tuple[str, str, str]

    def __init__(self, model, weight_decay: float = 0.0, fuse: bool = False, **hyper):
        """``model``: anything with the public buffers of ``gpumlp.model.MLP``: ``be``, the flat
        ``theta`` and ``grad``, ``sizes`` and the views ``params``/``grads`` (``W0``/``dW0``, …).
        ``hyper``: values for ``hyperparams`` (the rest keep their defaults; others are ignored,
        so a caller can pass every rule's)."""
        self.be, self.xp = model.be, model.be.xp
        self.theta, self.grad = model.theta, model.grad  # (n_params,) device, updated in place
        # views of theta and grad: the weight matrices W{l} (n_in, n_out) and their gradients
        self._W = [W for k, W in model.params.items() if k.startswith("W")]
        self._dW = [model.grads[f"d{k}"] for k in model.params if k.startswith("W")]
        self.weight_decay = float(weight_decay)
        self.hyper = {k: h.check(k, hyper.get(k, h.default)) for k, h in self.hyperparams.items()}
        self.t = 0  # steps taken
        self.state_buffers = {name: self.xp.zeros_like(self.theta) for name in self.buffers}
        self._tmp = self.xp.zeros_like(self.theta) if self.scratch else None  # no per-step allocation
        # With ``fuse``, backward steps the big weight matrices itself (``fused_update``) and
        # ``step`` updates the rest: ``_rest`` holds the (theta, grad) spans between them.
        big = [l for l, W in enumerate(self._W) if W.size >= FUSE_MIN_WEIGHTS]
        self.fused = tuple(big) if fuse and self.fusable else ()
        self.sizes = getattr(model, "sizes", None)  # for the layout of θ; tests may pass bare buffers
        self._rest = _spans(model, self.fused)
        self._decay = None  # decay_spans' λ vector, made on first use

    def fused_update(self, lr: float) -> dict:
        """``{layer: (α, β)}`` for ``MLP.backward``: the layers whose weights it updates itself,
        W ← β·W + α·dW. Each ``step`` of an optimiser made with ``fuse=True`` must follow a backward
        given this. Empty unless fused (only SGD is: the others need dW itself)."""
        return {}

    def step(self, lr: float) -> None:
        """One update of ``theta`` from ``grad`` with learning rate ``lr``; on the device, no sync.
        ``grad`` is consumed: the update may use it as scratch. The backend runs ``reference_step``,
        or on CUDA the same math as one fused kernel (the class's ``cuda``)."""
        self.t += 1
        self.be.optimizer_step(self, float(lr))

    def reference_step(self, lr: float) -> None:
        """The readable update: weight decay added to the gradients, then the rule (``_update``)."""
        if self.weight_decay:
            for l, (W, dW) in enumerate(zip(self._W, self._dW)):
                if l not in self.fused:  # (a fused layer's decay is in its β)
                    self.be.axpby(self.weight_decay, W, 1.0, dW)  # (n_in, n_out) dW += λW = d/dW ½λ‖W‖²
        self._update(lr)

    def decay_spans(self) -> list[tuple]:
        """``[(theta, grad, wd), …]`` over the spans ``step`` updates, for a fused kernel: ``wd``
        is λ on the entries of the weight matrices (a device vector shaped like the span) and 0 on
        the biases, or the number 0.0 without weight decay."""
        if not self.weight_decay:
            return [(theta, grad, 0.0) for theta, grad in self._rest]
        if self._decay is None:
            from gpumlp.model import param_layout

            decay = self.xp.zeros_like(self.theta)  # (flat_size,) on the device, made once
            for k, (offset, shape) in param_layout(self.sizes).items():
                if k.startswith("W"):
                    decay[offset : offset + shape[0] * shape[1]] = self.weight_decay
            self._decay = [decay[i:j] for i, j in _span_bounds(self.sizes, self.fused)]
        return [(theta, grad, wd) for (theta, grad), wd in zip(self._rest, self._decay)]

    def _update(self, lr: float) -> None:
        raise NotImplementedError  # each rule below

    def kernel_scalars(self, lr: float) -> tuple:
        """The numbers ``cuda`` takes after ``g, wd``, in its order (for this step)."""
        return (lr,)

    def state(self) -> tuple[dict, dict]:
        """``(JSON-ready description, {name: device buffer})``, for a checkpoint."""
        meta = {"name": self.name, "weight_decay": self.weight_decay, "hyper": self.hyper, "t": self.t}
        return meta, self.state_buffers

    def load_state(self, meta: dict, arrays: dict) -> None:
        """Continue from a checkpoint's optimiser state: ``arrays`` are host arrays shaped like theta."""
        if meta.get("name") != self.name:
            raise ConfigError(
                f"the checkpoint was trained with --optimizer {meta.get('name')}, not {self.name}; "
                "a resumed run keeps its optimiser"
            )
        missing = set(self.buffers) - set(arrays)
        if missing:
            raise ConfigError(
                f"the checkpoint lacks the {self.name} optimiser's state {sorted(missing)}, so its run cannot "
                "continue exactly; start a new run (the network itself loads and tests as it is)"
            )
        from gpumlp.model import unpack_into

        self.t = int(meta.get("t", 0))
        for name in self.buffers:
            unpack_into(self.be, self.state_buffers[name], arrays[name], self.sizes)  # (n_params,) → flat


class SGD(Optimizer):
    """Plain mini-batch gradient descent: θ ← θ − η g.

    With ``fuse``, each big weight matrix takes its step inside backward: W ← W − η(Aᵀ dZ + λW)
    = (1 − ηλ)·W − η·Aᵀ dZ is one BLAS product with α = −η and β = 1 − ηλ, so its dW is never
    written, scaled and subtracted (three passes over the matrix saved); the biases and small
    matrices take the usual step here."""

    name = "sgd"
    fusable = True
    # ``wd`` is λ on the weight matrices' entries and 0 on the biases (a vector shaped like θ), or
    # the number 0 without weight decay: g + wd·θ is the gradient with ½λ‖W‖² added.
    cuda = ("T g, T wd, T lr", "T p", "p = p - lr * (g + wd * p);")

    def fused_update(self, lr: float) -> dict:
        return {l: (-lr, 1 - lr * self.weight_decay) for l in self.fused}

    def _update(self, lr: float) -> None:
        # One axpby per span: a single BLAS pass over a long one, numpy's operators on a short one.
        for theta, grad in self._rest:  # all of theta in one span when nothing is fused
            self.be.axpby(-lr, grad, 1.0, theta)  # θ ← θ − η g


class Momentum(Optimizer):
    """Heavy-ball momentum (PyTorch's form): v ← μ v + g;  θ ← θ − η v."""

    name = "momentum"
    hyperparams = MOMENTUM
    buffers = ("velocity",)
    cuda = ("T g, T wd, T lr, T mu", "T p, T v", "v = mu * v + (g + wd * p); p = p - lr * v;")

    def kernel_scalars(self, lr: float) -> tuple:
        return lr, self.hyper["momentum"]

    def _update(self, lr: float) -> None:
        v = self.state_buffers["velocity"]
        self.be.axpby_chain([
            (1.0, self.grad, self.hyper["momentum"], v),  # v ← μ v + g
            (-lr, v, 1.0, self.theta),  # θ ← θ − η v
        ])  # fmt: skip


class Nesterov(Momentum):
    """Nesterov momentum (Sutskever et al. 2013, PyTorch's form): v ← μ v + g;  θ ← θ − η (g + μ v)."""

    name = "nesterov"
    cuda = (
        "T g, T wd, T lr, T mu",
        "T p, T v",
        "const T ge = g + wd * p; v = mu * v + ge; p = p - lr * (ge + mu * v);",
    )

    def _update(self, lr: float) -> None:
        v, mu, g = self.state_buffers["velocity"], self.hyper["momentum"], self.grad
        self.be.axpby_chain([
            (1.0, g, mu, v),  # v ← μ v + g
            (-lr, g, 1.0, self.theta),  # θ ← θ − η (g + μ v), in two passes that need no temporary
            (-lr * mu, v, 1.0, self.theta),
        ])  # fmt: skip


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015):  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
    θ ← θ − η m̂ / (√v̂ + ε)  with the bias corrections m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)."""

    name = "adam"
    hyperparams = {
        "beta1": Hyper(0.9, "Adam's β₁ (decay of the first moment).", below_one=True),
        "beta2": Hyper(0.999, "Adam's β₂ (decay of the second moment).", below_one=True),
        "eps": Hyper(1e-8, "Adam's ε."),
    }
    buffers = ("m", "v")
    scratch = True
    graph_refusal = "Adam's bias corrections change every step"
    # step = η √(1−β₂ᵗ)/(1−β₁ᵗ) and eps_c = ε √(1−β₂ᵗ): the bias corrections folded in on the host.
    cuda = (
        "T g, T wd, T b1, T b2, T eps_c, T step",
        "T p, T m, T v",
        """
        const T ge = g + wd * p;
        m = b1 * m + (T(1) - b1) * ge;
        v = b2 * v + (T(1) - b2) * (ge * ge);
        p = p - step * (m / (sqrt(v) + eps_c));
        """,
    )

    def kernel_scalars(self, lr: float) -> tuple:
        b1, b2, eps = self.hyper["beta1"], self.hyper["beta2"], self.hyper["eps"]
        c2 = math.sqrt(1 - b2**self.t)  # as in _update
        return b1, b2, eps * c2, lr * c2 / (1 - b1**self.t)

    def _update(self, lr: float) -> None:
        b1, b2, eps = self.hyper["beta1"], self.hyper["beta2"], self.hyper["eps"]
        m, v, g, tmp = self.state_buffers["m"], self.state_buffers["v"], self.grad, self._tmp
        xp, axpby = self.xp, self.be.axpby
        axpby(1 - b1, g, b1, m)  # m ← β₁ m + (1 − β₁) g
        xp.multiply(g, g, out=g)  # g², in g's buffer (a step consumes the gradient)
        axpby(1 - b2, g, b2, v)  # v ← β₂ v + (1 − β₂) g²
        # The bias corrections folded into two host scalars, so the device does one pass:
        # η m̂ / (√v̂ + ε) = η √(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + ε √(1−β₂ᵗ))
        c2 = math.sqrt(1 - b2**self.t)
        xp.sqrt(v, out=tmp)
        tmp += eps * c2
        xp.divide(m, tmp, out=tmp)
        axpby(-lr * c2 / (1 - b1**self.t), tmp, 1.0, self.theta)


def merged_hyperparams(rules: Iterable[type[Optimizer]]) -> dict[str, Hyper]:
    """Every rule's hyper-parameters in one namespace (one ``TrainConfig`` field and option each):
    rules share a name only with the same default and range (momentum, nesterov); else ConfigError."""
    merged, owner = {}, {}
    for rule in rules:
        for k, h in rule.hyperparams.items():
            first, first_rule = merged.setdefault(k, h), owner.setdefault(k, rule.name)
            if (first.default, first.need) != (h.default, h.need):
                raise ConfigError(
                    f"update rule {rule.name!r}: --{k} {h.default:g} {h.need} clashes with {first_rule!r}'s --{k} "
                    f"{first.default:g} {first.need}; one name, one option: rename it or reuse {first_rule!r}'s record"
                )
    return merged


RULES: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Momentum, Nesterov, Adam)}
OPTIMIZERS = tuple(RULES)  # the built-in rules; RULES is the registry, ``register`` adds to it
# Every rule's hyper-parameters by name, checked for clashes at import. RULES and HYPERPARAMS are
# updated in place (``register``): modules that imported them see a registered rule.
HYPERPARAMS: dict[str, Hyper] = merged_hyperparams(RULES.values())
# What is built from the rules, rebuilt in order on a change: TrainConfig (training/config.py), `gpumlp train`.
REBUILDS: list[Callable[[], None]] = []


def register(rule: type[Optimizer]) -> type[Optimizer]:
    """Add the update rule ``rule`` (``--optimizer rule.name``) and rebuild what is generated from
    the rules (``REBUILDS``). Refuses a taken name and a hyper-parameter clash (``merged_hyperparams``)."""
    if rule.name in RULES:
        raise ConfigError(
            f"an update rule named {rule.name!r} is already registered ({RULES[rule.name].__name__}); "
            f"give {rule.__name__} another name, or unregister the old one first"
        )
    _install({**RULES, rule.name: rule})
    return rule


def unregister(name: str) -> None:
    """Remove the update rule ``name`` and rebuild what is generated from the rules."""
    if name not in RULES:
        raise ConfigError(f"no update rule named {name!r} is registered: choose one of {', '.join(RULES)}")
    _install({k: v for k, v in RULES.items() if k != name})


@contextlib.contextmanager
def registered(rule: type[Optimizer]):
    """``register(rule)`` for the ``with`` block, then ``unregister`` it (for tests)."""
    register(rule)
    try:
        yield rule
    finally:
        unregister(rule.name)


def _install(rules: dict[str, type[Optimizer]]) -> None:
    """Make ``rules`` the registry and rebuild from it; if a rebuild refuses it, the old set stays."""
    merged, old = merged_hyperparams(rules.values()), dict(RULES)  # (raises on a clash: nothing changed yet)
    for table, new in ((RULES, rules), (HYPERPARAMS, merged)):
        table.clear()
        table.update(new)
    try:
        for rebuild in REBUILDS:
            rebuild()
    except Exception:
        if rules != old:
            _install(old)
        raise


def make_optimizer(name: str, model, *, weight_decay=0.0, fuse=False, **hyper) -> Optimizer:
    """The optimiser ``name`` for ``model``'s flat parameter and gradient buffers. ``hyper``: any
    rule's hyper-parameters (``HYPERPARAMS``); the rule takes its own. ``fuse``: let backward take
    the step of big weight matrices where the rule allows (see ``SGD``)."""
    if name not in RULES:
        raise ConfigError(f"unknown --optimizer {name!r}: choose one of {', '.join(RULES)}")
    unknown = set(hyper) - set(HYPERPARAMS)
    if unknown:
        raise ConfigError(f"no update rule has the hyper-parameter(s) {sorted(unknown)}: {', '.join(HYPERPARAMS)}")
    return RULES[name](model, weight_decay=weight_decay, fuse=fuse, **hyper)


def _spans(model, skip: tuple[int, ...]) -> list[tuple]:
    """``[(theta[i:j], grad[i:j]), …]``: the flat buffers in as few contiguous pieces as possible,
    leaving out the weight matrices of the layers in ``skip`` (layout W0 b0 W1 b1 …)."""
    if not skip:
        return [(model.theta, model.grad)]
    return [(model.theta[i:j], model.grad[i:j]) for i, j in _span_bounds(model.sizes, skip)]


def _span_bounds(sizes, skip: tuple[int, ...]) -> list[tuple[int, int]]:
    """``[(i, j), …]`` covering the flat vector (``model.param_layout``) except the weight matrices
    of the layers in ``skip``; the zero gaps between parameters ride along."""
    from gpumlp.model import flat_size, param_layout

    bounds, start = [], 0
    for k, (offset, shape) in param_layout(sizes).items():
        if k.startswith("W") and int(k[1:]) in skip:
            if offset > start:
                bounds.append((start, offset))
            start = offset + shape[0] * shape[1]
    bounds.append((start, flat_size(sizes)))
    return bounds


def apply_max_norm(model, max_norm: float) -> None:
    """Rescale each unit's incoming weight vector (a column of W, (n_in,)) to norm ≤ ``max_norm``
    (Srebro & Shraibman 2005; with dropout, Srivastava et al. 2014). On the device, no sync."""
    for k, W in model.params.items():
        if k.startswith("W"):
            model.be.max_norm_(W, max_norm)


def lr_at(epoch: int, *, lr: float, epochs: int, schedule: str, warmup: int, step_size: int, gamma: float) -> float:
    """The learning rate of ``epoch`` (1-based) under ``schedule`` after ``warmup`` epochs.

    constant: η.  step: η·γ^⌊(e − w − 1)/step_size⌋.  cosine: ½η(1 + cos(π (e − w − 1)/(E − w))),
    from η in the first epoch after warm-up towards 0 (never 0: the last epoch still learns).
    Warm-up epochs e ≤ w ramp linearly: η·e/(w + 1).
    """
    if epoch <= warmup:
        return lr * epoch / (warmup + 1)
    k = epoch - warmup - 1  # epochs since warm-up ended
    if schedule == "constant":
        return lr
    if schedule == "step":
        return lr * gamma ** (k // step_size)
    if schedule == "cosine":
        return 0.5 * lr * (1 + math.cos(math.pi * k / max(epochs - warmup, 1)))
    raise ConfigError(f"unknown --schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
