"""README's results section and docs/speed.md's table, written from the files that measured them.

    python scripts/published.py            # rewrite the sections between the markers
    python scripts/published.py --check    # exit 1, saying so, when a section differs from the files

The table comes from docs/results.json (``scripts/reproduce.py --json``), the speed sentence from
docs/bench.json (``scripts/bench.py --compare torch --no-extras --json``); each names its CPU, its
date and the command that wrote it. tests/test_published.py fails when README and the files disagree.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- results: written by `python scripts/published.py` from docs/results.json and docs/bench.json -->"
END = "<!-- results: end -->"
SPEED_BEGIN = "<!-- speed: written by `python scripts/published.py` from docs/bench.json -->"
SPEED_END = "<!-- speed: end -->"
SWEEP_BEGIN = "<!-- sweep: written by `python scripts/published.py` from docs/sweep.json -->"
SWEEP_END = "<!-- sweep: end -->"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _s(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:.0f}"


def _cpu(m: dict) -> str:
    return f"{m['cpu']}, {m['cores']} cores, numpy {m['numpy']} with {m['blas']}"


def _network(cfg: dict) -> str:
    sizes = "-".join(map(str, cfg["sizes"]))
    extras = [x for x, on in (("dropout", cfg["dropout"]), ("max-norm", cfg["max_norm"])) if on]
    extras += [cfg["augment"].replace(",", "+")] if cfg["augment"] != "none" else []
    return (
        f"{sizes} {cfg['activation']}/{cfg['loss']}, {cfg['optimizer']}{', ' + ', '.join(extras) if extras else ''}, "
        f"{cfg['epochs']} epochs on {cfg['train_size']:,} images"
    )


def _spread(s: dict, fmt, unit: str = "") -> str:
    if s["min"] == s["max"]:
        return f"{fmt(s['mean'])}{unit}"
    return f"{fmt(s['mean'])}{unit} ({fmt(s['min'])}–{fmt(s['max'])}{unit})"


def results_table(results: dict, sweep: dict | None = None) -> list[str]:
    lines = [
        "Test accuracy on the 10,000 MNIST test images; every hyper-parameter chosen on the validation "
        "images (the 10,000 training-file images after the first 50,000), never on the test set. Measured on "
        f"{_cpu(results['machine'])}, {results['date'][:10]}:",
        "",
        "| command | network | seeds | test accuracy | training time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, p in results["presets"].items():
        s, cfg = p["summary"], p["runs"][0]["config"]
        command = "`gpumlp train`" if name == "default" else f"`gpumlp train --preset {name}`"
        acc = _spread(s["test_accuracy"], _pct)
        lines.append(
            f"| {command} | {_network(cfg)} | {','.join(map(str, p['seeds']))} | {acc} | "
            f"{_spread(s['train_seconds'], _s, ' s')} |"
        )
    lines += sweep_rows(sweep)
    lines += [
        "",
        "Mean (min–max) over the seeds shown; training time is the epochs' training, without validation, "
        f"loading and the test. Command: `{results['command']}`.",
    ]
    return lines + sweep_sentence(sweep)


def sweep_rows(sweep: dict | None) -> list[str]:
    """The README's row for the recipe a sweep chose (docs/sweep.json, ``scripts/sweep_report.py``)."""
    if not sweep or not sweep.get("chosen"):
        return []
    c, study = sweep["chosen"], sweep["study"]
    runs = c["tested"]["runs"]
    acc = _spread(_spread_of([r["test_accuracy"] for r in runs]), _pct)
    secs = _spread(_spread_of([r["train_seconds"] for r in runs]), _s, " s")
    trials = study["complete"] + study["pruned"]
    return [
        f"| `gpumlp sweep run {sweep['space']} --trials {trials}`, trial {c['trial']} | "
        f"{_network(c['config'])} | {','.join(str(r['seed']) for r in runs)} | {acc} | {secs} |"
    ]


def sweep_sentence(sweep: dict | None) -> list[str]:
    if not sweep or not sweep.get("chosen"):
        return []
    c, fast = sweep["chosen"], sweep["fast"]
    verdict = "so `fast` takes its recipe" if sweep["better"] else "so `fast` keeps its own"
    return [
        f"The sweep row: of the study's {len(sweep['candidates'])} best trials, retrained over seeds "
        f"{','.join(str(r['seed']) for r in c['runs'])} beside `fast` in one run (`{sweep['command']}`, "
        f"{sweep['date'][:10]}, {_cpu(sweep['machine'])}), the best mean validation accuracy in no more "
        f"than `fast`'s training time, then tested: validation "
        f"{_pct(c['mean']['val_accuracy'])} against `fast`'s {_pct(fast['mean']['val_accuracy'])}, {verdict} "
        f"([docs/recipes.md](docs/recipes.md#a-sweep-for-the-fast-preset)).",
    ]


def _spread_of(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def speed_sentence(bench: dict) -> list[str]:
    g, t, comp = bench["gpumlp"], bench["torch"], bench["comparison"]
    rows = {r["name"]: (r, gr) for r, gr in zip(comp["rows"], g["rows"])}
    rust = [r["ratio"] for r in comp["rows"] if r["rust_row"] and r["ratio"]]
    others = [
        f"{r['ratio']:.2f}× for {name} at batch {gr['batch_size']}"
        for name, (r, gr) in rows.items()
        if not r["rust_row"] and r["ratio"]
    ]
    return [
        f"Speed beside PyTorch {t['info']['torch']} on the same CPU ({_cpu(g['machine'])}), side by side in one "
        f"run (`{g['command']}`, {g['date'][:10]}): {comp['geomean_rust_rows']:.2f}× PyTorch's images/s at "
        f"batch 10 (geometric mean of the Rust project's {len(rust)} networks; {min(rust):.2f}× to "
        f"{max(rust):.2f}× per network), {', '.join(others)}."
    ]


def speed_table(bench: dict) -> str:
    """docs/speed.md's table: every row of the run beside PyTorch, with its steps and seconds."""
    g, t, comp = bench["gpumlp"], bench["torch"], bench["comparison"]
    lines = [
        SPEED_BEGIN,
        f"`{g['command']}` ({g['date'][:10]}; {_cpu(g['machine'])}; PyTorch {t['info']['torch']}, "
        f"{t['info']['threads']} threads; gpumlp's BLAS threads chosen per run, {g['machine']['training_threads'][1]}, "
        "one for small products). Each "
        "timing is the epochs' training steps after a warm-up, synchronised at the end, on both sides; "
        f"the median of {g['repeats']} timings, gpumlp's and PyTorch's alternating:",
        "",
        "| network | batch | steps | gpumlp s | gpumlp images/s | PyTorch images/s | gpumlp/PyTorch |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for gr, tr, c in zip(g["rows"], t["rows"], comp["rows"]):
        torch_ips = f"{tr['images_per_s']:,.0f}" if tr.get("images_per_s") else "n/a"
        ratio = f"{c['ratio']:.2f}×" if c["ratio"] else "n/a"
        lines.append(
            f"| {gr['name']} | {gr['batch_size']} | {gr['steps']:,} | {gr['seconds_median']:.3f} | "
            f"{gr['images_per_s']:,.0f} | {torch_ips} | {ratio} |"
        )
    lines += ["", f"Geometric mean over the batch-10 rows: **{comp['geomean_rust_rows']:.2f}×**.", SPEED_END]
    return "\n".join(lines)


def section(results: dict, bench: dict, sweep: dict | None = None) -> str:
    return "\n".join([BEGIN, *results_table(results, sweep), "", *speed_sentence(bench), END])


def current(text: str, begin: str = BEGIN, end: str = END) -> str:
    start, stop = text.index(begin), text.index(end) + len(end)
    return text[start:stop]


def pairs(root: Path = ROOT) -> list[tuple[Path, str, str]]:
    """``[(file, its section, the section the files give), …]`` for README.md and docs/speed.md."""
    results = json.loads((root / "docs" / "results.json").read_text())
    bench = json.loads((root / "docs" / "bench.json").read_text())
    sweep_file = root / "docs" / "sweep.json"
    sweep = json.loads(sweep_file.read_text()) if sweep_file.exists() else None
    readme, speed, recipes = root / "README.md", root / "docs" / "speed.md", root / "docs" / "recipes.md"
    found = [
        (readme, current(readme.read_text()), section(results, bench, sweep)),
        (speed, current(speed.read_text(), SPEED_BEGIN, SPEED_END), speed_table(bench)),
    ]
    if sweep is not None:
        have = current(recipes.read_text(), SWEEP_BEGIN, SWEEP_END)
        found.append((recipes, have, "\n".join([SWEEP_BEGIN, sweep_report().markdown(sweep), SWEEP_END])))
    return found


def sweep_report():
    """scripts/sweep_report.py as a module (its ``markdown`` writes docs/recipes.md's sweep section)."""
    spec = importlib.util.spec_from_file_location("sweep_report", Path(__file__).with_name("sweep_report.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(root: Path = ROOT) -> tuple[str, str]:
    """``(README's section, the section the files give)``."""
    _, have, want = pairs(root)[0]
    return have, want


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only say whether README agrees with the files")
    args = p.parse_args(argv)
    status = 0
    for path, have, want in pairs():
        name = path.relative_to(ROOT)
        if have == want:
            print(f"{name} agrees with docs/results.json and docs/bench.json")
        elif args.check:
            print(f"{name} differs from docs/results.json or docs/bench.json: run python scripts/published.py")
            status = 1
        else:
            path.write_text(path.read_text().replace(have, want))
            print(f"rewrote {name}'s section")
    return status


if __name__ == "__main__":
    sys.exit(main())
