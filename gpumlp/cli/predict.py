"""Asking a network what digits are: image files prepared as MNIST was (``gpumlp.data.images``)
and test images, predicted in one batch, and ``gpumlp predict``'s text.

    predict_images     [(784,), …] → one batched forward pass → digit, top 3, probabilities
    save_inputs        each image's 28×28 input as a PNG (``gpumlp predict --save-input DIR``)

Everything here runs on the host with numpy; only ``predict_images`` touches the model's device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpumlp.data.images import PILLOW_HINT, ascii_preview, load_digit
from gpumlp.errors import ConfigError
from gpumlp.losses import DEFAULT_FLOOR, LOSSES


def class_label(d: int, names: tuple[str, ...] | None = None) -> str:
    """``"9"``, or with a dataset's class names ``"9 Ankle boot"``."""
    return str(d) if names is None else f"{d} {names[d]}"


def predict_images(
    model, images, class_names: tuple[str, ...] | None = None, floor: float = DEFAULT_FLOOR, one: str = "a digit"
) -> list[dict]:
    """Classify MNIST-style inputs with one batched forward pass.

    ``images``: a list of host arrays of 784 pixels in [0, 1] (``to_mnist`` outputs or dataset rows).
    Returns per image ``{"digit", "top3": [[digit, p], …], "probabilities": [p0, …, p9],
    "confident"}``, plus ``"class"``, the predicted class's name, when ``class_names`` are given
    (not MNIST), and ``"reason"`` when not confident: the loss record's certainty (the top
    confidence) is below ``floor``, the network's own (``metadata.confidence_floor``), so the
    image is probably not ``one`` of its classes (the dataset's ``one``). For a ce network the
    probabilities are its softmax; an mse network's outputs are independent sigmoids, so they are
    divided by their sum to add up to 1 (a ranking, not a calibrated law).
    """
    if len(images) == 0:
        return []
    X = np.stack([np.asarray(x, dtype=np.float64).reshape(-1) for x in images])  # (n, 784) host
    if X.shape[1] != model.sizes[0]:
        raise ConfigError(f"expected images of {model.sizes[0]} pixels, got {X.shape[1]}")
    A = model.be.to_numpy(model.predict_proba(X)).astype(np.float64)  # (n, 10); host → device → host, once
    loss = LOSSES[model.loss]
    P = loss.confidences(np, A)  # (n, 10) rows sum to 1: the loss record's rule
    sure = loss.certainty(np, P)  # (n,)
    order = np.argsort(-P, axis=1, kind="stable")  # (n, 10) most probable first
    return [
        {
            "digit": int(o[0]),
            **({"class": class_names[int(o[0])]} if class_names else {}),
            "top3": [[int(d), float(p[d])] for d in o[:3]],
            "probabilities": [float(v) for v in p],
            "confident": bool(s >= floor),
            **({} if s >= floor else {"reason": not_sure_reason(float(s), floor, one)}),
        }
        for p, o, s in zip(P, order, sure)
    ]


def not_sure_reason(certainty: float, floor: float, one: str = "a digit") -> str:
    """``"probably not a digit: top confidence 41.2% is below 60.5%, this network's floor"``."""
    return (
        f"probably not {one}: top confidence {100 * certainty:.1f}% is below {100 * floor:.1f}%, this network's floor"
    )


@dataclass
class Predictions:
    """What ``gpumlp predict`` found: one row per image, in the order given."""

    model: object  # the MLP
    dataset: object  # its gpumlp.data.datasets record (class names)
    sources: list  # [(name, true label or None)]
    inputs: list  # (784,) host arrays: what the network saw
    results: list  # predict_images' dicts

    @property
    def kind(self) -> str:
        return LOSSES[self.model.loss].confidence_name

    def as_json(self) -> dict:
        """``--json``: per image its answer and ``input``, the 784 pixels in [0, 1] the network saw
        (row by row, bright ink on black; 4 decimals, finer than a PNG's 1/255)."""
        rows = [
            dict(source=s, label=y, **r, input=[round(float(v), 4) for v in np.asarray(x).reshape(-1)])
            for (s, y), r, x in zip(self.sources, self.results, self.inputs)
        ]
        return {"probabilities": self.kind, "predictions": rows}


def predict_files(checkpoint, images, index, device="cpu", data_dir=None, dataset=None, any_dataset=False,
                  note=print) -> Predictions:  # fmt: skip
    """What ``gpumlp predict`` does: the checkpoint on ``device``, each image file prepared as MNIST
    was (``load_digit``) and each test image ``index`` of its dataset, predicted in one batch."""
    from gpumlp.backends.registry import get_backend
    from gpumlp.data.datasets import for_checkpoint
    from gpumlp.formats.checkpoint import load

    if not images and not index:
        raise ConfigError(
            "give one or more image files, or --index N for an MNIST test image (see gpumlp predict --help)"
        )
    be = get_backend(device)
    if be.note:
        note(be.note)
    model, meta = load(checkpoint, device=be)
    rec = for_checkpoint(meta, checkpoint, dataset, any_dataset)
    sources = [(str(p), None) for p in images]
    inputs = [load_digit(p) for p in images]  # (784,) each, host
    if index:
        from gpumlp.data.load import load_dataset

        _, _, X_test, y_test = load_dataset(rec, data_dir)
        for n in index:
            if not 0 <= n < len(X_test):
                raise ConfigError(
                    f"--index {n} is out of range: the {rec.title} test images are 0 to {len(X_test) - 1}"
                )
            sources.append((f"{rec.name}-test[{n}]", int(y_test[n])))
            inputs.append(X_test[n])
    from gpumlp.formats.metadata import confidence_floor

    results = predict_images(model, inputs, rec.class_names, confidence_floor(meta), rec.one)  # one batch
    return Predictions(model, rec, sources, inputs, results)


PREVIEW_UP_TO = 3  # images: more, and the 29-line previews would bury the answers (unless --preview)


def format_predictions(run: Predictions, preview: bool | None = None) -> str:
    """``gpumlp predict``'s text: per image the answer, its label if known, the top 3 and the
    preview (by default, None, only for up to ``PREVIEW_UP_TO`` images)."""
    if preview is None:
        preview = len(run.results) <= PREVIEW_UP_TO
    lines = [] if LOSSES[run.model.loss].probabilities else [f"({run.model}: probabilities are {run.kind})"]
    names = run.dataset.class_names
    for (source, label), r, x in zip(run.sources, run.results, run.inputs):
        top = ", ".join(f"{class_label(d, names)} {100 * p:.1f}%" for d, p in r["top3"])
        truth = "" if label is None else f" (label {class_label(label, names)})"
        unsure = "" if r["confident"] else f"   not sure: {r['reason']}"
        lines.append(f"{source}: {class_label(r['digit'], names)}{truth}   top 3: {top}{unsure}")
        if preview:
            lines.append(ascii_preview(x))
    return "\n".join(lines)


def input_png_name(source: str) -> str:
    """The file ``--save-input`` writes for an image: ``photo.jpg`` → ``photo.png``,
    ``mnist-test[7]`` → ``mnist-test-7.png``."""
    stem = Path(source).stem if not source.endswith("]") else source
    return (re.sub(r"[^\w.-]+", "-", stem).strip("-.") or "input") + ".png"


def save_inputs(run: Predictions, folder: Path, images=()) -> list[Path]:
    """Write each image's input as ``folder/<name>.png`` (``input_png_name``): a grey PNG as MNIST's,
    white ink on black, 28×28, tagged ``Software: gpumlp``. Never replaces a file gpumlp did not
    write, one of ``images`` or one written here a moment ago: those take the next ``-2``, ``-3``,
    … name. Returns the paths written, in the order of the images."""
    from gpumlp.cli.outputs import PNG_METADATA, own_png
    from gpumlp.errors import GpumlpError
    from gpumlp.formats.atomic import atomic_write

    try:
        from PIL import Image, PngImagePlugin
    except ImportError:
        raise GpumlpError(PILLOW_HINT) from None
    info = PngImagePlugin.PngInfo()
    for key, value in PNG_METADATA.items():
        info.add_text(key, value)
    written: list[Path] = []
    for (source, _), x in zip(run.sources, run.inputs):
        x = np.clip(np.asarray(x, dtype=np.float64).reshape(-1), 0.0, 1.0)  # (784,) host
        side = int(round(np.sqrt(x.size)))
        pixels = Image.fromarray(np.uint8(np.round(x.reshape(side, side) * 255)), mode="L")  # (28, 28)
        path = own_png(folder / input_png_name(source), avoid=(*images, *written), option="--save-input")
        save = lambda f, im=pixels: im.save(f, format="PNG", pnginfo=info)  # noqa: E731
        written.append(atomic_write(path, save, "a 28×28 input", "choose another --save-input folder"))
    return written
