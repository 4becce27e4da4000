"""Reproduce the results table on the machine it runs on: the Rust rows, then each preset over seeds.

What it runs, in order:

1. The five rows of the Rust project's README results table, trained with gpumlp exactly as
   ``scripts/rust_rows.py`` trains them (sigmoid, mse, batch 10, lr 3.0, gpumlp's default init,
   no validation so the time is training only), with the first of ``--seeds``; each is tested on
   the 10000 test images and, as the Rust table was, on the first 1000.
2. ``default`` (plain ``gpumlp train``: the reference network on 50000 images for 30 epochs), then
   each preset of ``gpumlp.training.presets.PRESETS`` (``seed``, ``fast``, ``best``) once per seed
   (0, 1, 2 by default; ``--seeds-for best=0`` gives one preset its own seeds) through
   ``gpumlp.training.run.run``: 50000 training images (10000 for ``seed``), 10000 for validation,
   the 10000 test images read once at the end.

For each preset it reports the test accuracy (mean and min–max over seeds), the epochs run (early
stopping may end a run early), the training seconds (training only: the sum over epochs of
train images ÷ images/s), the whole run's wall time (loading, training, validation after every
epoch, the test and saving), the training images/s, and the machine (CPU, cores, numpy and its
BLAS, or the GPU).

How long: on this project's 2-core CPU the Rust rows take ~15 s, ``seed`` and ``fast`` well under
a minute per seed, and ``best`` about 15 minutes per seed, so the default run (3 seeds) takes
about 50 minutes. Progress goes to stderr; stdout carries only the markdown.

    python scripts/reproduce.py --json docs/results.json --out docs/results.md --seeds-for best=0
    python scripts/reproduce.py --presets fast --seeds 0 --no-rust-rows
    python scripts/reproduce.py --device cuda --save-dir checkpoints/reproduce
    python scripts/reproduce.py --smoke     # seconds; checks the script only

``--smoke`` shrinks every run (2000 training images, 1 epoch, a small ``best`` network, tiny Rust
rows) so the whole script finishes in seconds; its output is labelled "SMOKE RUN: not results".
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import gpumlp
from gpumlp.cli.bench import command_line
from gpumlp.cli.bench_machine import machine_info
from gpumlp.errors import GpumlpError
from gpumlp.training.config import TrainConfig, describe_recipe, preset_config
from gpumlp.training.presets import PRESETS
from gpumlp.training.run import run
from gpumlp.training.state import EpochStats

SMOKE_LABEL = "SMOKE RUN: not results"
# --smoke: every preset shrunk to seconds; `best` also gets a much smaller network.
SMOKE_OPTIONS = dict(train_size=2000, val_size=500, test_size=500, epochs=1)
SMOKE_SIZES = {"best": (784, 32, 10)}
SMOKE_RUST = dict(train_images=1000, epochs=1, test_size=500)  # each Rust row, shrunk
TEST_SIZE = 10_000  # the Rust rows are tested on all the test images (and their first 1000)
DEFAULT = "default"  # plain `gpumlp train`: TrainConfig's defaults, no preset
RUNS = (DEFAULT, *PRESETS)  # what --presets may name, in the order they run


def load_rust_rows():
    """scripts/rust_rows.py as a module: its RUST_ROWS, run_row and format_table are reused as they are."""
    spec = importlib.util.spec_from_file_location("rust_rows", Path(__file__).with_name("rust_rows.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def preset_list(text: str) -> list[str]:
    """``"seed,fast"`` → ["seed", "fast"]; an unknown name is an argparse error that names the choices."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names or [text]:
        if name not in RUNS:
            raise argparse.ArgumentTypeError(f"unknown preset {name!r}: choose from {', '.join(RUNS)}")
    return list(dict.fromkeys(names))


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` → [0, 1, 2]: distinct integers, 0 or more."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers such as 0,1,2 (got {text!r})") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct integers 0 or more, such as 0,1,2 (got {text!r})")
    return seeds


def seeds_for(text: str) -> tuple[str, list[int]]:
    """``"best=0"`` → ("best", [0]): one preset's own seeds."""
    name, sep, seeds = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected PRESET=SEEDS such as best=0 (got {text!r})")
    return preset_list(name)[0], seed_list(seeds)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--data-dir", default=None, help="MNIST folder (default: $GPUMLP_DATA_DIR or the cache)")
    p.add_argument("--presets", type=preset_list, default=list(RUNS), help=f"comma list (default: {','.join(RUNS)})")
    p.add_argument("--seeds", type=seed_list, default=[0, 1, 2], help="comma list of seeds (default: 0,1,2)")
    p.add_argument("--seeds-for", type=seeds_for, action="append", default=[], metavar="PRESET=SEEDS",
                   help="one preset's own seeds, e.g. best=0 (repeatable)")  # fmt: skip
    p.add_argument("--no-rust-rows", action="store_true", help="skip the Rust project's five rows")
    p.add_argument("--json", metavar="PATH", help="also write everything (per-seed runs, histories) as JSON")
    p.add_argument("--out", metavar="PATH", help="also write the markdown to PATH")
    p.add_argument("--save-dir", metavar="DIR", help="save each run's checkpoint as DIR/<preset>-seed<k>.npz")
    p.add_argument("--smoke", action="store_true", help=f"tiny runs in seconds, to test the script ({SMOKE_LABEL})")
    args = p.parse_args(argv)
    args.seeds_for = dict(args.seeds_for)
    for path in (args.json, args.out):  # fail now, not after 50 minutes of training
        if path and Path(path).is_dir():
            p.error(f"{path} is a folder: give a file name, e.g. {Path(path) / 'results.md'}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seconds(s: float) -> str:
    """Seconds with precision that suits their size: 0.42, 3.1, 478."""
    return f"{s:.2f}" if s < 10 else f"{s:.1f}" if s < 100 else f"{s:.0f}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_rust_rows(args, data, seed: int) -> dict:
    """The Rust table's five rows through rust_rows.run_row (tiny under --smoke)."""
    rr = load_rust_rows()
    test_size = SMOKE_RUST["test_size"] if args.smoke else TEST_SIZE
    row_args = argparse.Namespace(device=args.device, init=None, seed=seed, test_size=test_size)
    rows = []
    for sizes, n_train, epochs, rust_acc, rust_s in rr.RUST_ROWS:
        if args.smoke:
            n_train, epochs = SMOKE_RUST["train_images"], SMOKE_RUST["epochs"]
        r = rr.run_row(row_args, data, sizes, n_train, epochs, rust_acc, rust_s)
        rows.append(r)
        log(
            f"Rust row {r['layers']}, {n_train} images × {plural(epochs, 'epoch')}: {100 * r['test_accuracy']:.2f}% "
            f"(first {r['test_size_first']}: {100 * r['test_accuracy_first']:.1f}%) in {seconds(r['seconds'])} s"
        )
    return {
        "seed": seed,
        "init": rows[0]["init"],
        "batch_size": rr.BATCH,
        "lr": rr.LR,
        "test_size": test_size,
        "rows": rows,
    }


def preset_run_config(args, name: str, seed: int):
    overrides = dict(seed=seed, device=args.device)
    if args.smoke:
        overrides.update(SMOKE_OPTIONS)
        if name in SMOKE_SIZES:
            overrides["sizes"] = SMOKE_SIZES[name]
    return TrainConfig(**overrides) if name == DEFAULT else preset_config(name, **overrides)


def run_one(args, name: str, seed: int) -> dict:
    """One preset with one seed through gpumlp.training.run.run; the per-seed record of the JSON."""
    cfg = preset_run_config(args, name, seed)
    save = Path(args.save_dir) / f"{name}-seed{seed}.npz" if args.save_dir else False

    def on_epoch(e: EpochStats) -> None:
        val = "" if e.val_accuracy is None else f", val {100 * e.val_accuracy:.2f}%"
        log(
            f"  {name}, seed {seed}, epoch {e.epoch}/{cfg.epochs}: loss {e.train_loss:.4f}{val}, {seconds(e.seconds)} s"
        )

    t0 = time.perf_counter()
    result = run(cfg, args.data_dir, save=save, log=lambda m: log(f"  {m}"), on_epoch=on_epoch)
    wall = time.perf_counter() - t0
    train_seconds = sum(cfg.train_size / e.images_per_s for e in result.history)
    record = {
        "seed": seed,
        "test_accuracy": result.test_accuracy,
        "epochs_run": len(result.history),
        "epochs_planned": cfg.epochs,
        "stopped_early": len(result.history) < cfg.epochs,
        "train_seconds": train_seconds,
        "wall_seconds": wall,
        "images_per_s": cfg.train_size * len(result.history) / train_seconds,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "config": cfg.to_dict(),
        "history": [asdict(e) for e in result.history],
    }
    log(
        f"preset {name}, seed {seed}: {100 * result.test_accuracy:.2f}% in {seconds(wall)} s "
        f"({plural(record['epochs_run'], 'epoch')}, training {seconds(train_seconds)} s, "
        f"{record['images_per_s']:,.0f} images/s)"
    )
    return record


def spread(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def run_preset(args, name: str) -> dict:
    """Every seed of one preset, and their summary (mean, min, max of each measure)."""
    seeds = args.seeds_for.get(name, args.seeds)
    runs = [run_one(args, name, seed) for seed in seeds]
    cfg = preset_run_config(args, name, seeds[0])
    measures = ("test_accuracy", "train_seconds", "wall_seconds", "images_per_s")
    summary = {k: spread([r[k] for r in runs]) for k in measures}
    summary["epochs_run"] = [r["epochs_run"] for r in runs]
    summary["description"] = (
        f"{'-'.join(map(str, cfg.sizes))} {cfg.activation}/{cfg.loss}, {describe_recipe(cfg)}, batch "
        f"{cfg.batch_size}, {plural(cfg.epochs, 'epoch')}, {cfg.train_size} training images ({cfg.val_size} validation)"
    )
    return {"seeds": list(seeds), "summary": summary, "runs": runs}


def md_table(head: list[str], body: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [head, ["---"] * len(head), *body])


def preset_table(presets: dict) -> str:
    head = ["preset", "network", "seeds", "test acc. mean", "test acc. min–max", "epochs"]
    head += ["training s mean", "training s min–max", "run s mean", "images/s (training)"]
    body = []
    for name, p in presets.items():
        s, cfg = p["summary"], p["runs"][0]["config"]
        acc, train = s["test_accuracy"], s["train_seconds"]
        epochs = sorted(set(s["epochs_run"]))
        body.append([
            name, f"{'-'.join(map(str, cfg['sizes']))} {cfg['activation']}/{cfg['loss']}",
            ",".join(map(str, p["seeds"])), f"{100 * acc['mean']:.2f}%",
            f"{100 * acc['min']:.2f}–{100 * acc['max']:.2f}%",
            str(epochs[0]) if len(epochs) == 1 else ", ".join(map(str, s["epochs_run"])),
            seconds(train["mean"]), f"{seconds(train['min'])}–{seconds(train['max'])}",
            seconds(s["wall_seconds"]["mean"]), f"{s['images_per_s']['mean']:,.0f}",
        ])  # fmt: skip
    return md_table(head, body)


def machine_line(m: dict) -> str:
    line = f"{m['cpu']}, {m['cores']} cores ({m['cores_usable']} usable), Python {m['python']}, numpy {m['numpy']}"
    line += f", BLAS {m['blas']}" + (f" ({m['blas_config']})" if m.get("blas_config") else "")
    if "gpu" in m:
        line += f"; GPU {m['gpu']}, CuPy {m['cupy']}"
    return line + f"; device {m['device']}"


def format_markdown(result: dict) -> str:
    smoke = [f"**{SMOKE_LABEL}** (tiny sizes, 1 epoch: this only checks that the script works)", ""]
    lines = smoke if result["smoke"] else []
    rust = result["rust_rows"]
    if rust is not None:
        lines += [
            "The Rust project's results table, rerun with gpumlp (sigmoid, mse, batch "
            f"{rust['batch_size']}, lr {rust['lr']}, seed {rust['seed']}, init {rust['init']}; validation off, so "
            f"the time is training only; accuracy on {rust['test_size']} test images and, like the Rust table,"
            f" the first {rust['rows'][0]['test_size_first']}):",
            "",
            load_rust_rows().format_table(rust["rows"], markdown=True),
            "",
        ]
    if result["presets"]:
        lines += [
            "The presets, and `default` (plain `gpumlp train`), each over the seeds shown (training s: "
            "training only, the sum over epochs; "
            "run s: the whole run, with validation after each epoch, the test and loading):",
            "",
            preset_table(result["presets"]),
            "",
        ]
        lines += [f"- `{name}`: {p['summary']['description']}" for name, p in result["presets"].items()] + [""]
    lines += [
        f"Machine: {machine_line(result['machine'])}.",
        f"Command: `{result['command']}` ({result['date']}, {seconds(result['total_seconds'])} s in all).",
    ]
    if result["smoke"]:
        lines += ["", f"**{SMOKE_LABEL}**"]
    return "\n".join(lines)


def reproduce(args) -> dict:
    """Everything this run measured, as one JSON-ready dict."""
    start = time.perf_counter()
    be = gpumlp.get_backend(args.device)  # fails now if the device is unusable
    result = {
        "smoke": args.smoke,
        "label": SMOKE_LABEL if args.smoke else None,
        "command": command_line(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(be),
        "device": args.device,
        "seeds": list(args.seeds),
    }
    data = gpumlp.load_mnist(args.data_dir)  # fails now if MNIST is missing; decodes into the cache once
    result["rust_rows"] = None if args.no_rust_rows else run_rust_rows(args, data, args.seeds[0])
    result["presets"] = {name: run_preset(args, name) for name in args.presets}
    result["total_seconds"] = time.perf_counter() - start
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        log(f"{SMOKE_LABEL}: tiny sizes, 1 epoch")
    try:
        result = reproduce(args)
    except GpumlpError as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        return 1
    markdown = format_markdown(result)
    print(markdown)
    for path, text in ((args.out, markdown + "\n"), (args.json, json.dumps(result, indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
