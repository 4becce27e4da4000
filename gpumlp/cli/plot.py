"""Pictures of training runs and test reports, saved as PNG files.

matplotlib is an optional extra (``pip install 'gpumlp[plot]'``), imported only when a picture is
asked for. Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so
no display is needed and pyplot's global state (and the user's own backend choice) is left alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from gpumlp.cli.outputs import PNG_METADATA
from gpumlp.errors import GpumlpError
from gpumlp.formats.atomic import atomic_write
from gpumlp.formats.untrusted import open_regular, read_limited
from gpumlp.training.state import METRICS_KEYS

MISSING = "plotting needs matplotlib: pip install 'gpumlp[plot]'"
DPI = 120
OPTIONAL = ("val_loss", "val_accuracy")  # may be null (no validation set)
LEGEND_INSIDE = 4  # runs: up to this many, a legend inside each axes; more, one below both
MAX_METRICS_BYTES = 1 << 26  # a line per epoch, ~250 bytes: a quarter of a million epochs


def _new_figure(width: float, height: float):
    """A matplotlib Figure of ``width`` × ``height`` inches; a one-line error without matplotlib."""
    try:
        import matplotlib  # noqa: F401  first: sys.modules["matplotlib"] = None must fail here
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise GpumlpError(MISSING) from None
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # render with Agg whatever matplotlib.get_backend() says
    return fig


def _save(fig, out) -> Path:
    """Write ``fig`` as a PNG at ``out``, atomically (gpumlp.formats.atomic), marked as gpumlp's own."""
    write = lambda f: fig.savefig(f, format="png", dpi=DPI, metadata=PNG_METADATA)  # noqa: E731
    return atomic_write(out, write, "a plot", "choose another output path")


# ---------------------------------------------------------------- training curves


def read_metrics(path) -> list[dict]:
    """The epochs of a ``<name>.metrics.jsonl`` file (one JSON object per line, blank lines
    skipped), each checked to have a numeric ``epoch`` and ``train_loss``, and ``val_loss`` and
    ``val_accuracy`` numeric or null."""
    path = Path(path)
    missing = f"metrics file {path} not found; pass the .metrics.jsonl a training run wrote"
    f, size = open_regular(path, GpumlpError, missing)  # a FIFO is refused, not waited on
    try:
        with f:
            raw = read_limited(f, size, MAX_METRICS_BYTES, path, GpumlpError, "any run's metrics", text=True)
            text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GpumlpError(f"cannot read metrics file {path} ({e})") from None
    epochs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except RecursionError:  # [[[[… nested deeper than Python's stack
            raise GpumlpError(f"{path}, line {number}: JSON nested too deeply; is it a .metrics.jsonl file?") from None
        except ValueError as e:
            raise GpumlpError(f"{path}, line {number}: not valid JSON ({e}); is it a .metrics.jsonl file?") from None
        if not isinstance(row, dict):
            raise GpumlpError(f"{path}, line {number}: expected a JSON object per epoch, got {type(row).__name__}")
        for key in METRICS_KEYS:
            value = row.get(key)
            if value is None and key in OPTIONAL:
                continue
            if key not in row:
                raise GpumlpError(f"{path}, line {number}: no {key!r}; is it a .metrics.jsonl file?")
            if not (type(value) is float or type(value) is int and abs(value) < 2**63):  # 10**400: no float
                raise GpumlpError(f"{path}, line {number}: {key} is {value!r}, expected a number")
        epochs.append(row)
    if not epochs:
        raise GpumlpError(f"metrics file {path} is empty: no epochs to plot")
    return epochs


def run_name(path) -> str:
    """``runs/relu.npz.metrics.jsonl`` (or an older run's ``relu.metrics.jsonl``) → ``relu``: the
    legend label of a run, with every ``$`` escaped (matplotlib would read ``$…$`` as mathtext)."""
    name = Path(path).name.removesuffix(".jsonl").removesuffix(".metrics")
    for suffix in (".npz", ".json"):
        name = name.removesuffix(suffix)
    return name.replace("$", r"\$")


def _series(epochs: list[dict], key: str, scale: float = 1.0) -> tuple[list, list]:
    """(epochs, values) of ``key`` where it is not null."""
    pairs = [(e["epoch"], scale * e[key]) for e in epochs if e.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(metrics_files: list[Path], out: Path) -> Path:
    """Loss (train solid, validation dashed) and validation accuracy (%) per epoch of one or more
    runs, overlaid in one colour per run, saved as a PNG at ``out``."""
    if not metrics_files:
        raise GpumlpError("no metrics files given: pass one or more <name>.metrics.jsonl")
    runs = [(run_name(p), read_metrics(p)) for p in metrics_files]
    fig = _new_figure(11, 4.4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for (name, epochs), colour in zip(runs, colours):
        ax_loss.plot(*_series(epochs, "train_loss"), "-", color=colour, label=f"{name} train")
        x, v = _series(epochs, "val_loss")
        if x:
            ax_loss.plot(x, v, "--", color=colour, label=f"{name} validation")
        x, v = _series(epochs, "val_accuracy", 100.0)
        if x:
            ax_acc.plot(x, v, "-", color=colour, marker="o", markersize=3, label=name)
    losses = [v for _, e in runs for k in ("train_loss", "val_loss") for v in _series(e, k)[1]]
    if losses and min(losses) > 0:
        ax_loss.set_yscale("log")  # losses fall by orders of magnitude; a log axis shows the late epochs
        _plain_log_labels(ax_loss.yaxis)
    ax_loss.set(title="loss per epoch", xlabel="epoch", ylabel="mean loss")
    ax_acc.set(title="validation accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs 1, 2, 3, not 1.5
        ax.grid(True, which="major", alpha=0.4)
    _legends(fig, (ax_loss, ax_acc), [name for name, _ in runs], colours)
    if not ax_acc.lines:
        ax_acc.set(xticks=[], yticks=[])
        ax_acc.text(0.5, 0.5, "no validation data", ha="center", va="center", transform=ax_acc.transAxes)
    names = ", ".join(name for name, _ in runs) if len(runs) <= 3 else f"{len(runs)} runs"
    fig.suptitle(f"gpumlp training: {names}")
    return _save(fig, out)


def _legends(fig, axes, names: list[str], colours: list[str]) -> None:
    """A legend in each axes for a few runs; for more, one legend of run colours below both axes,
    in columns, the figure grown to hold it: a legend of 20 runs inside would hide the curves."""
    if len(names) <= LEGEND_INSIDE:
        for ax in axes:
            if ax.lines:
                ax.legend(fontsize="small")
        return
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c) for c in colours]
    ncols = min(len(names), 5)
    rows = math.ceil(len(names) / ncols)
    fig.set_size_inches(fig.get_figwidth(), fig.get_figheight() + 0.22 * rows + 0.3)
    fig.legend(handles, names, loc="outside lower center", ncols=ncols, fontsize="small",
               title="runs (loss: solid train, dashed validation)", title_fontsize="small")  # fmt: skip


def _plain_log_labels(axis) -> None:
    """Label a log axis 0.04, 0.1, 0.3 instead of 4×10⁻², 10⁻¹, 3×10⁻¹ (same ticks as matplotlib's)."""
    from matplotlib.ticker import LogFormatterSciNotation

    class Plain(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""  # keep matplotlib's choice of ticks

    axis.set_major_formatter(Plain())
    axis.set_minor_formatter(Plain(labelOnlyBase=False))


# ---------------------------------------------------------------- test reports


def plot_confusion(report: dict, out: Path) -> Path:
    """Heat map of ``report["confusion"]`` (from ``report.test_report``), counts in the cells, saved
    as a PNG at ``out``. The colour scale is logarithmic so that single mistakes show beside a
    diagonal of hundreds; empty cells stay white."""
    cm = np.asarray(report["confusion"])  # (10, 10) rows true, columns predicted
    fig = _new_figure(7.2, 6.2)  # first: without matplotlib, this is the error to give
    from matplotlib.colors import LogNorm

    ax = fig.subplots()
    shown = np.ma.masked_equal(cm, 0)  # zeros have no logarithm: left blank
    image = ax.imshow(shown, cmap="Blues", norm=LogNorm(vmin=1, vmax=max(int(cm.max()), 2)))
    fig.colorbar(image, ax=ax, label="images (log scale)")
    for t in range(cm.shape[0]):
        for p in range(cm.shape[1]):
            if cm[t, p]:
                dark = cm[t, p] > math.sqrt(max(int(cm.max()), 1))  # upper half of the log scale
                ax.text(p, t, str(cm[t, p]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    ticks = range(cm.shape[0])
    ax.set(xticks=ticks, yticks=ticks, xlabel="predicted digit", ylabel="true digit")
    ax.set_title(f"confusion matrix: {100 * report['accuracy']:.2f}% of {report['n']} test images correct")
    return _save(fig, out)


def plot_mistakes(report: dict, X: np.ndarray, out: Path, cols: int = 5) -> Path:
    """The most confident mistakes of ``report`` as 28×28 grayscale images, ``cols`` per row, each
    titled "true t / pred p (c%)". X: the host images (n, 784) in [0, 1] the report was made on."""
    X = np.asarray(X)
    mistakes = report["mistakes"]
    if X.ndim != 2 or X.shape[1] != 784:
        raise GpumlpError(f"expected host images of shape (n, 784), got {X.shape}")
    if mistakes and max(m["index"] for m in mistakes) >= len(X):
        raise GpumlpError(f"the report names image {max(m['index'] for m in mistakes)}, but X has {len(X)}")
    if cols < 1:
        raise GpumlpError(f"cols must be at least 1 (got {cols})")
    cols = min(cols, max(len(mistakes), 1))
    rows = max(math.ceil(len(mistakes) / cols), 1)
    fig = _new_figure(max(2.0 * cols, 8.0), 2.25 * rows + 0.5)  # at least as wide as the title
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, m in zip(axes, mistakes):
        ax.imshow(X[m["index"]].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"true {m['true']} / pred {m['predicted']} ({100 * m['confidence']:.2f}%)", fontsize=9)
        ax.text(0.5, -0.03, f"image {m['index']}", transform=ax.transAxes, ha="center", va="top", fontsize=8,
                color="0.4")  # fmt: skip
    if not mistakes:
        axes[0].text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=axes[0].transAxes)
    else:
        conf = report.get("confidence", "confidence")
        what = "the most confident mistake" if len(mistakes) == 1 else f"the {len(mistakes)} most confident mistakes"
        fig.suptitle(f"{what} ({conf} of the predicted digit)")
    return _save(fig, out)


# ---------------------------------------------------------------- what the first layer looks for


def plot_weights(model, out: Path, units: int = 100, title: str | None = None) -> Path:
    """The first layer's weights W0 (784, n_1) as a grid of 28×28 images, one per unit (the first
    ``units``, at most 100), saved as a PNG at ``out``. Each image has its own symmetric colour
    scale: red where a bright pixel excites the unit, blue where it inhibits it, white for 0."""
    if not 1 <= units <= 100:
        raise GpumlpError(f"--units must be between 1 and 100 (got {units})")
    W0 = np.asarray(model.be.to_numpy(model.params["W0"]), dtype=np.float64)  # (784, n_1) device → host
    if W0.shape[0] != 784:
        raise GpumlpError(f"the first layer takes {W0.shape[0]} inputs, not 28×28 = 784 pixels")
    n = min(units, W0.shape[1])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig = _new_figure(max(0.8 * cols, 5.0), 0.8 * rows + 0.7)
    axes = np.atleast_1d(fig.subplots(rows, cols, gridspec_kw={"wspace": 0.04, "hspace": 0.04})).ravel()
    for ax in axes:
        ax.set_axis_off()
    for j, ax in enumerate(axes[:n]):
        w = W0[:, j].reshape(28, 28)
        limit = max(float(np.abs(w).max()), 1e-12)
        ax.imshow(w, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    shown = f"the first {n} of {W0.shape[1]} units" if n < W0.shape[1] else f"all {n} units" if n > 1 else "its 1 unit"
    arch = "-".join(map(str, model.sizes))
    fig.suptitle(title or f"first-layer weights of {arch}\n{shown} (red +, blue −)", fontsize="medium")
    return _save(fig, out)


# ---------------------------------------------------------------- sweeps


def plot_sweep(points: list[dict], importances: dict | None, folder: Path) -> list[Path]:
    """A study's optimisation history (each finished trial's validation accuracy by trial number,
    complete ones as dots, pruned ones as crosses at their last epoch, and the best so far) and,
    when known, its options' importances, as ``history.png`` and ``importance.png`` in ``folder``."""
    from gpumlp.cli.outputs import own_png

    fig = _new_figure(7, 4.2)
    ax = fig.subplots()
    for state, marker in (("complete", "o"), ("pruned", "x")):
        shown = [p for p in points if p["state"] == state and p["value"] is not None]
        ax.plot([p["number"] for p in shown], [100 * p["value"] for p in shown], marker, label=state, alpha=0.8)
    best, xs, ys = None, [], []
    for p in (p for p in points if p["state"] == "complete"):
        best = p["value"] if best is None else max(best, p["value"])
        xs.append(p["number"])
        ys.append(100 * best)
    ax.step(xs, ys, where="post", color="C3", label="best so far")
    ax.set(title="validation accuracy per trial", xlabel="trial", ylabel="accuracy (%)")
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower right")
    folder.mkdir(parents=True, exist_ok=True)
    saved = [_save(fig, own_png(folder / "history.png"))]
    if importances:
        fig = _new_figure(7, 0.5 + 0.45 * len(importances))
        ax = fig.subplots()
        names = list(importances)[::-1]
        ax.barh(names, [importances[k] for k in names], color="C0")
        ax.set(title="importance of each searched option", xlabel="importance (sums to 1)")
        saved.append(_save(fig, own_png(folder / "importance.png", tuple(saved))))
    return saved
