"""What a study found, in words: a line per finished trial and the running status while a sweep
runs, the best trials and the options' importances (``gpumlp sweep show``), and the best trial's
complete training options (``gpumlp sweep best``)."""

from __future__ import annotations

from optuna.trial import TrialState

from gpumlp.sweep import study as studies
from gpumlp.sweep.space import THREADS, check_space, config


def options_text(params: dict) -> str:
    """``"lr 0.153, batch-size 128"``: a trial's chosen options."""
    return ", ".join(f"{k} {_value(v)}" for k, v in params.items())


def _value(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def status_line(p) -> str:
    """``trials 12/60  pruned 3  failed 0  best 97.83% (#7: lr 0.15, …)  elapsed 1:23  left 4:10``"""
    c = p.counts
    best = f"best {_percent(p.best.value)} (#{p.best.number}: {options_text(p.best.params)})" if p.best else "best —"
    return (f"trials {c.finished}/{p.total}  pruned {c.pruned}  failed {c.failed}  running {c.running}  {best}  "
            f"elapsed {_clock(p.elapsed)}  left {_clock(p.eta)}")  # fmt: skip


def trial_line(t, p) -> str:
    """One finished trial, and where the study stands: the line a sweep prints per trial off a terminal."""
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}[t.state]
    value = t.value if t.state == TrialState.COMPLETE else _last(t)
    epochs, seconds = t.user_attrs.get("epochs"), t.user_attrs.get("seconds")
    ran = f"  {epochs} epoch{'s' if epochs != 1 else ''}" if epochs is not None else ""
    took = f"  {seconds:.1f}s" if seconds is not None else ""
    return f"trial {t.number:>3} {state:<8}  val acc {_percent(value)}{ran}{took}  {options_text(t.params)}  |  " + (
        status_line(p)
    )


def _last(t) -> float | None:
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def summary(study, url: str, top: int = 10) -> dict:
    """``gpumlp sweep show``'s content: the study, its space, its counts, its ``top`` best
    complete trials and the options' importances (None, with the reason, before two complete trials)."""
    trials = study.get_trials(deepcopy=False)
    c = studies.counts(trials)
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    rows = [{"number": t.number, "val_accuracy": t.value, "params": t.params, "epochs": t.user_attrs.get("epochs"),
             "seconds": t.user_attrs.get("seconds"), "threads": t.user_attrs.get("threads"),
             "worker": t.user_attrs.get("worker"), "checkpoint": _kept(t.user_attrs.get("checkpoint"))}
            for t in complete[:top]]  # fmt: skip
    importances, why = None, None
    if len(complete) < 2:
        why = "needs at least two complete trials"
    else:
        import optuna

        try:
            importances = {k: round(v, 4) for k, v in optuna.importance.get_param_importances(study).items()}
        except (RuntimeError, ValueError) as e:  # e.g. every complete trial chose the same values
            why = str(e).split("\n")[0]
    return {
        "study": study.study_name, "storage": studies.shown(url), "space": study.user_attrs.get(studies.SPACE_ATTR),
        "trials": {"complete": c.complete, "pruned": c.pruned, "failed": c.failed, "running": c.running,
                   "waiting": c.waiting},
        "best": rows, "importances": importances, "importances_note": why,
    }  # fmt: skip


def history_points(study) -> list[dict]:
    """Each finished trial's number, state and validation accuracy (a pruned one's at its last epoch)."""
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}
    return [{"number": t.number, "state": names[t.state], "value": t.value if t.state == TrialState.COMPLETE
             else _last(t)} for t in study.get_trials(deepcopy=False) if t.state in names]  # fmt: skip


def _kept(checkpoint: dict | None) -> dict | None:
    """A trial's saved network, and on the computer that saved it whether it is still there (with
    ``--keep best`` a better trial's replaces it)."""
    import os
    import socket

    if checkpoint is None or checkpoint.get("host") != socket.gethostname():
        return checkpoint
    return {**checkpoint, "exists": os.path.exists(checkpoint["path"])}


def format_summary(d: dict) -> str:
    t = d["trials"]
    lines = [f"study {d['study']} in {d['storage']}: {t['complete']} complete, {t['pruned']} pruned, "
             f"{t['failed']} failed, {t['running']} running"]  # fmt: skip
    if not d["best"]:
        return "\n".join([*lines, "no complete trial yet"])
    names = list(d["best"][0]["params"])
    header = ["#", "val acc", "epochs run", "seconds", *names]
    table = [header] + [
        [str(r["number"]), _percent(r["val_accuracy"]), str(r["epochs"] or "—"),
         f"{r['seconds']:.1f}" if r["seconds"] is not None else "—", *(_value(r["params"].get(k, "—")) for k in names)]
        for r in d["best"]
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["", *("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table)]
    kept = d["best"][0]["checkpoint"]
    if kept:
        lines.append(f"\nbest network (trial {d['best'][0]['number']}): {kept['path']} on {kept['host']}")
    if d["importances"]:
        lines += ["", "importance of each option (optuna.importance.get_param_importances):"]
        lines += [f"  {k:<{max(map(len, d['importances']))}}  {v:.3f}" for k, v in d["importances"].items()]
    else:
        lines.append(f"\nimportance: {d['importances_note']}")
    return "\n".join(lines)


def best_options(study) -> tuple[dict, object]:
    """The best trial's complete training options by ``TrainConfig`` field name (every field, as
    ``TrainConfig.to_dict`` gives them: the space's fixed values, the trial's chosen ones, the
    defaults, its seed and device) plus the BLAS ``threads`` it trained with; and the trial."""
    from gpumlp.errors import SweepError

    try:
        best = study.best_trial
    except ValueError:
        raise SweepError(f"study {study.study_name!r} has no complete trial yet") from None
    if studies.SPACE_ATTR not in study.user_attrs:
        raise SweepError(
            f"study {study.study_name!r} was not made by gpumlp sweep run (it records no space file), so its "
            "trials are not gpumlp train options; name a study gpumlp sweep run made"
        )
    space = check_space(study.user_attrs[studies.SPACE_ATTR])
    device = (best.user_attrs.get("worker") or {}).get("device", "cpu")
    options = config({**space.fixed, **best.params, "device": device}).to_dict()
    options[THREADS] = best.user_attrs.get(THREADS)
    return options, best


def write_best(path, options: dict, study: str, best, url: str | None = None) -> object:
    """Write ``best_options`` as a config file for ``gpumlp train --config``; returns its path.
    Never over the study's own SQLite files (``url``: its storage), nor over a file that is not
    a TOML config file (``configfile.write``)."""
    from gpumlp.training.configfile import write

    studies.refuse_storage_file(path, url, "--out")
    header = (f"The best trial of sweep study {study}: trial {best.number}, validation accuracy "
              f"{100 * best.value:.2f}% ({best.params and options_text(best.params)})")  # fmt: skip
    return write(path, options, header)
