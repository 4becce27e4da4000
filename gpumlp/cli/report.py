"""The full test report of a trained network: accuracy, per-class scores, confusion matrix and the
most confident mistakes, as a JSON-able dict and as plain text.

The forward pass runs on the model's device in chunks (``evaluation.outputs``); each chunk sends
back only its predicted labels and their confidences (one transfer per chunk, never per image).
Everything else is counted on the host from those two vectors.
"""

from __future__ import annotations

import numpy as np

from gpumlp.errors import ConfigError
from gpumlp.losses import LOSSES
from gpumlp.model import MLP, N_CLASSES
from gpumlp.training.evaluation import outputs


def predictions(model: MLP, X) -> tuple[np.ndarray, np.ndarray]:
    """Predicted digits (n,) int64 and their confidences (n,) float64, on the host, for images X
    (n, 784) on the host or the device. A confidence is what ``gpumlp predict`` and ``serve`` report
    for the image: the loss record's ``certainty`` of its ``confidences`` (the top one; for ``ce``
    the softmax probability, for ``mse`` the sigmoid outputs divided by their sum)."""
    be, xp = model.be, model.be.xp
    loss = LOSSES[model.loss]
    preds, confs = [], []
    for A, _, _ in outputs(model, X):  # A (chunk, 10) on the device
        pred = xp.argmax(A, axis=1)  # (chunk,) exactly what model.predict and evaluate use
        sure = loss.certainty(xp, loss.confidences(xp, A))  # (chunk,) the loss record's rule
        # Labels 0–9 are exact in any float dtype, so both vectors travel in one array: one
        # device → host transfer per chunk (a sync point).
        host = be.to_numpy(xp.stack([pred.astype(A.dtype), sure.astype(A.dtype)]))  # (2, chunk)
        preds.append(host[0].astype(np.int64))
        confs.append(host[1].astype(np.float64))
    if not preds:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(preds), np.concatenate(confs)


def confusion_matrix(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(10, 10) int64 counts on the host: row = true digit, column = predicted digit."""
    return np.bincount(y * N_CLASSES + pred, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den element-wise, 0 where den is 0 (an undefined score is reported as 0, never NaN)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def class_scores(cm: np.ndarray) -> list[dict]:
    """Per-digit precision, recall, F1 and support from a confusion matrix (rows true, columns predicted)."""
    tp = np.diag(cm).astype(np.float64)  # (10,)
    support = cm.sum(axis=1)  # (10,) images of each true digit
    precision = _ratio(tp, cm.sum(axis=0))  # of the images predicted d, the share that are d
    recall = _ratio(tp, support)  # of the images of d, the share predicted d
    f1 = _ratio(2 * precision * recall, precision + recall)
    return [
        {"digit": d, "precision": float(precision[d]), "recall": float(recall[d]), "f1": float(f1[d]),
         "support": int(support[d])}
        for d in range(N_CLASSES)
    ]  # fmt: skip


def test_report(model: MLP, X, y, n_mistakes: int = 10, class_names: tuple[str, ...] | None = None) -> dict:
    """Everything about ``model`` on images X (n, 784) in [0, 1] (host or device) and host labels
    y (n,), as a JSON-able dict:

    - ``n``, ``correct``, ``accuracy`` (correct / n, exactly what ``evaluation.evaluate`` returns);
    - ``classes``: per digit 0–9, ``precision``, ``recall``, ``f1`` and ``support`` (images of that
      digit); a score whose denominator is 0 (a digit never predicted, or absent) is 0; with
      ``class_names`` (a dataset other than MNIST, e.g. Fashion-MNIST) each also has its ``name``;
    - ``macro``: the unweighted means of precision, recall and F1 over all 10 digits;
    - ``confusion``: 10×10 ints, rows = true digit, columns = predicted digit;
    - ``mistakes``: the ``n_mistakes`` most confident wrong answers, most confident first (ties by
      index), each ``{"index", "true", "predicted", "confidence"}``;
    - ``confidence``: what a confidence is, the loss record's ``confidence_name``: ``"softmax"``
      for a ``ce`` network, ``"sigmoid outputs divided by their sum"`` for an ``mse`` one (the
      same numbers ``gpumlp predict`` and ``serve`` give the same image).
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != X.shape[0]:
        raise ConfigError(f"expected one label per image: {X.shape[0]} images, labels of shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= N_CLASSES)):
        raise ConfigError(f"labels must be integers 0–{N_CLASSES - 1}; are these MNIST labels?")
    if n_mistakes < 0:
        raise ConfigError(f"--mistakes must be 0 or more (got {n_mistakes})")
    y = y.astype(np.int64)
    pred, conf = predictions(model, X)  # (n,), (n,) on the host
    cm = confusion_matrix(y, pred)
    classes = class_scores(cm)
    if class_names is not None:
        if len(class_names) != N_CLASSES:
            raise ConfigError(f"expected {N_CLASSES} class names, got {len(class_names)}")
        classes = [dict(c, name=name) for c, name in zip(classes, class_names)]
    wrong = np.flatnonzero(pred != y)  # (n_wrong,) ascending indices
    order = wrong[np.argsort(-conf[wrong], kind="stable")][:n_mistakes]  # most confident first
    correct = int(np.trace(cm))
    return {
        "n": len(y),
        "correct": correct,
        "accuracy": correct / max(len(y), 1),  # the same division as evaluation.evaluate
        "classes": classes,
        "macro": {k: float(np.mean([c[k] for c in classes])) for k in ("precision", "recall", "f1")},
        "confusion": cm.tolist(),
        "confidence": LOSSES[model.loss].confidence_name,
        "mistakes": [
            {"index": int(i), "true": int(y[i]), "predicted": int(pred[i]), "confidence": float(conf[i])} for i in order
        ],
    }


test_report.__test__ = False  # its name starts with "test": stop pytest collecting it where it is imported


def checkpoint_report(checkpoint, device="cpu", data_dir=None, test_size=10_000, n_mistakes=10, dataset=None,
                      any_dataset=False, note=print) -> tuple[dict, MLP, object, np.ndarray]:  # fmt: skip
    """What ``gpumlp test`` does: ``(test_report, model, dataset record, host test images)`` for the
    checkpoint on ``device``, on its own dataset's test set unless ``dataset`` (with ``any_dataset``
    for another than it was trained on). ``note`` hears why ``--device auto`` chose its device."""
    from gpumlp.backends.registry import get_backend
    from gpumlp.data.datasets import for_checkpoint
    from gpumlp.data.load import load_dataset, split
    from gpumlp.formats.checkpoint import load

    be = get_backend(device)  # first: a device that cannot work is the first thing to say
    if be.note:
        note(be.note)
    model, meta = load(checkpoint, device=be)
    rec = for_checkpoint(meta, checkpoint, dataset, any_dataset)
    _, _, (X, y) = split(*load_dataset(rec, data_dir), 0, 0, test_size)
    return test_report(model, X, y, n_mistakes=n_mistakes, class_names=rec.class_names), model, rec, X


def format_report(report: dict) -> str:
    """``test_report``'s dict as aligned plain text: accuracy, per-digit scores, the confusion
    matrix and the most confident mistakes."""
    n, correct = report["n"], report["correct"]
    lines = [
        f"test accuracy {100 * report['accuracy']:.2f}% ({n} images)",
        f"{correct} correct, {n - correct} wrong",
        "",
    ]
    # MNIST's digits in a column of 5; a dataset's class names ("9 Ankle boot") left-aligned
    named = [f"{c['digit']} {c['name']}" for c in report["classes"] if "name" in c]
    width = max(len(s) for s in ["macro", *named]) if named else 5
    label = (lambda c: f"{c['digit']} {c['name']}".ljust(width)) if named else (lambda c: f"{c['digit']:>5}")
    head, macro = ("class".ljust(width), "macro".ljust(width)) if named else ("digit", "macro")
    lines.append(f"{head}  {'precision':>9}  {'recall':>9}  {'F1':>9}  {'support':>7}")
    for c in report["classes"]:
        lines.append(f"{label(c)}  {c['precision']:>9.4f}  {c['recall']:>9.4f}  {c['f1']:>9.4f}  {c['support']:>7}")
    m = report["macro"]
    lines.append(f"{macro}  {m['precision']:>9.4f}  {m['recall']:>9.4f}  {m['f1']:>9.4f}  {n:>7}")

    cm = report["confusion"]
    width = max(5, *(len(str(v)) + 1 for row in cm for v in row))
    head = "true \\ pred"
    what = "class" if named else "digit"
    lines += [
        "",
        f"confusion matrix (rows: true {what}, columns: predicted {what}{', numbered as above' if named else ''})",
    ]
    lines.append(head + "".join(f"{d:>{width}}" for d in range(len(cm))))
    for d, row in enumerate(cm):
        lines.append(f"{d:>{len(head)}}" + "".join(f"{v:>{width}}" for v in row))

    mistakes = report["mistakes"]
    if not mistakes:  # none asked for (--mistakes 0), or none made: the counts above say which
        return "\n".join(lines + (["", "no mistakes"] if n == correct else []))
    what = "most confident mistake" if len(mistakes) == 1 else f"{len(mistakes)} most confident mistakes"
    lines += ["", f"{what} (confidence: {report['confidence']})"]
    lines.append(f"{'index':>6}  {'true':>4}  {'predicted':>9}  {'confidence':>10}")
    for e in mistakes:
        lines.append(f"{e['index']:>6}  {e['true']:>4}  {e['predicted']:>9}  {100 * e['confidence']:>9.2f}%")
    return "\n".join(lines)
