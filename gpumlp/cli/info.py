"""``gpumlp info``: a checkpoint's description (``gpumlp.formats.checkpoint.describe``) as the table
the command prints."""

from __future__ import annotations


def info_rows(d: dict) -> list[tuple[str, str]]:
    """The table ``gpumlp info`` prints for ``checkpoint.describe``'s dict: (label, text) rows."""
    cfg, h = d.get("config") or {}, d["history_summary"]
    foreign = d.get("format_label")  # another project's file, read as it is (not one converted from it)
    kind = foreign or f"{d['file_format']}, format version {d['version']}"
    rows = [
        ("checkpoint", f"{d['path']} ({kind}, {d['bytes']:,} bytes)"),
        (
            "architecture",
            f"{'-'.join(map(str, d['sizes']))}, sigmoid on every layer (gpumlp: sigmoid hidden, mse output), float64"
            if foreign
            else f"{'-'.join(map(str, d['sizes']))}, {d['activation']} hidden, {d['loss']} output, {d['dtype']}",
        ),
        ("parameters", f"{d['n_params']:,}"),
        ("input", f"pixel / {d.get('input_divisor', 255.0):g}"),
    ]
    if not foreign:
        rows.append(("dataset", d.get("dataset") or "mnist"))
    if foreign:
        rows.append(("file holds", f"{d['holds']} (no training history, date or versions)"))
        if d.get("cost"):
            rows.append(("cost", f"{d['cost']} (used only in training; outputs are sigmoids either way)"))
    if cfg:
        data = f"{cfg.get('train_size')} train / {cfg.get('val_size')} val images"
        rows.append(("training", f"batch {cfg.get('batch_size')}, lr {cfg.get('lr')}, init {d.get('init')}, "
                                 f"seed {cfg.get('seed')}, {data}"))  # fmt: skip
        rows += [("recipe", recipe(cfg))] if recipe(cfg) else []
    if d.get("imported_from") and not foreign:  # a file converted from another project's
        rows.append(("imported from", f"{d['imported_from']} (the time under 'trained on' is the conversion's)"))
    if h["epochs"]:
        loss = f"loss {h['first_train_loss']:.4f} → {h['last_train_loss']:.4f}"
        val = ""
        if h["best_val_accuracy"] is not None:
            val = (f", val acc best {100 * h['best_val_accuracy']:.2f}% (epoch {h['best_val_epoch']}), "
                   f"last {100 * h['last_val_accuracy']:.2f}%")  # fmt: skip
        rows.append(("history", f"{h['epochs']} epochs in {h['seconds']:.1f} s, {loss}{val}"))
    if d.get("test_accuracy") is not None:
        rows.append(("test accuracy", f"{100 * d['test_accuracy']:.2f}% ({d.get('test_size')} images)"))
    if not foreign:  # predict, the page and the API answer "not sure" below it (gpumlp/losses.py)
        rows.append(("not sure below", _floor(d.get("confidence_floor"))))
    versions = ", ".join(f"{k} {v}" for k, v in (d.get("versions") or {}).items())
    trained = [str(x) for x in (d.get("device"), d.get("created"), versions) if x]
    if trained:
        rows.append(("trained on", ", ".join(trained)))
    return rows


def recipe(cfg: dict) -> str | None:
    """``"preset best: nesterov lr 0.05 (cosine, 1 warm-up epoch), dropout 0.1, …, momentum 0.9"``:
    how a checkpoint's run trained, from its saved options; None where they no longer check out."""
    from gpumlp.errors import GpumlpError
    from gpumlp.optim import RULES
    from gpumlp.training.config import TrainConfig, describe_recipe

    try:
        c = TrainConfig(**cfg)
    except (GpumlpError, TypeError):
        return None
    rule = RULES.get(c.optimizer)
    hyper = [f", {k} {getattr(c, k):g}" for k in (rule.hyperparams if rule is not None else {})]
    text = describe_recipe(c) + "".join(hyper)
    return f"preset {c.preset}: {text}" if c.preset else text


def _floor(floor: dict | None) -> str:
    from gpumlp.losses import DEFAULT_FLOOR

    if not floor:
        return f"{100 * DEFAULT_FLOOR:.0f}% top confidence (the default: the file has no floor of its own)"
    return (f"{100 * floor['value']:.1f}% top confidence ({100 * floor['fraction']:g}% of its "
            f"{floor['images']:,} validation images fall below)")  # fmt: skip
