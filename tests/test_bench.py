"""The benchmark harness: its arithmetic, the shape of its report, and that it runs on every backend.

No timing is asserted: the machine is shared and its speed varies by ±30% from minute to minute.
PyTorch is optional; only the test of the PyTorch script needs it (skipped without it).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gpumlp.backends import blas
from gpumlp.cli.bench import (
    CONFIGS,
    RUST_ROWS,
    BenchConfig,
    bench_data,
    efficiency,
    flops_per_image,
    format_bench,
    run_bench,
    sgemm_gflops,
    timed_pair,
)
from gpumlp.cli.bench_machine import process_costs
from gpumlp.errors import ConfigError
from gpumlp.model import MLP
from gpumlp.training.presets import PRESETS

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
TINY = BenchConfig("tiny", (784, 8, 10), "sigmoid", "mse", 3.0, 10, 200)
ROW_KEYS = {"name", "sizes", "batch_size", "images", "epochs", "seconds", "images_per_s", "s_per_epoch", "gflops"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_image_by_hand():
    # 784-16-16-10: products 784·16 = 12544, 16·16 = 256, 16·10 = 160, in all 12960.
    # forward 2·12960 = 25920; backward 4·12960 − 2·12544 (no gradient w.r.t. the pixels) = 26752
    assert flops_per_image((784, 16, 16, 10)) == 25920 + 26752 == 52672
    # one layer: forward 2·a·b, backward dW only, 2·a·b
    assert flops_per_image((784, 10)) == 4 * 784 * 10


def test_efficiency_is_gflops_over_sgemm():
    assert efficiency(50.0, 200.0) == 0.25
    assert efficiency(50.0, None) is None


def test_configs_are_the_issue_matrix():
    assert [c.sizes for c in CONFIGS[:RUST_ROWS]] == [
        (784, 16, 16, 10), (784, 16, 16, 10), (784, 10), (784, 100, 50, 10), (784, 300, 100, 50, 10)
    ]  # fmt: skip
    assert all((c.activation, c.loss, c.lr, c.batch_size) == ("sigmoid", "mse", 3.0, 10) for c in CONFIGS[:RUST_ROWS])
    assert CONFIGS[0].images == 10_000  # the first Rust row trains on 10000 images
    big = [(c.sizes, c.batch_size, c.activation, c.loss, c.lr) for c in CONFIGS[RUST_ROWS : RUST_ROWS + 3]]
    assert big == [
        ((784, 100, 10), 128, "relu", "ce", 0.1),
        ((784, 800, 10), 128, "relu", "ce", 0.1),
        ((784, 1024, 1024, 10), 256, "relu", "ce", 0.1),
    ]
    presets = {c.name: c for c in CONFIGS[RUST_ROWS + 3 :]}
    for name in ("fast", "best"):
        (c,) = [c for label, c in presets.items() if label.startswith(f"preset {name} ")]
        options = PRESETS[name]
        assert (c.sizes, c.batch_size, c.lr) == (options["sizes"], options["batch_size"], options["lr"])
        assert all(options[k] == v for k, v in c.recipe)  # the preset's optimiser, dropout, augmentation…
        assert dict(c.recipe)["optimizer"] == options["optimizer"]
    for c in CONFIGS:
        MLP(c.sizes, c.activation, c.loss)  # every row is a network gpumlp builds


def check_result(result: dict) -> None:
    result = json.loads(json.dumps(result))  # JSON-ready: no numpy or device values
    assert {"command", "date", "machine", "data", "repeats", "sgemm", "rows", "process"} <= set(result)
    assert {"cpu", "cores", "numpy", "blas", "device"} <= set(result["machine"])
    sgemm = result["sgemm"]["gflops"]
    assert sgemm > 0
    (row,) = result["rows"]
    assert ROW_KEYS <= set(row)
    assert row["images"] == 200 and len(row["seconds"]) == result["repeats"] == 1
    assert row["steps"] == 20 and row["seconds_median"] == row["seconds"][0]  # 200 images at batch 10, one epoch
    assert all(row[k] > 0 for k in ("images_per_s", "s_per_epoch", "gflops"))
    assert row["gflops"] == pytest.approx(row["images_per_s"] * flops_per_image(TINY.sizes) / 1e9)
    assert row["efficiency"] == pytest.approx(row["gflops"] / sgemm)
    text = format_bench(result)
    assert "tiny" in text and " steps " in text
    assert re.search(r" 200×1 +20 +\d+\.\d{3} ", text)  # the row's steps and seconds, beside its images


def test_runs_on_a_tiny_configuration(mnist_dir, monkeypatch):
    monkeypatch.setenv("GPUMLP_THREADS", "1")
    result = run_bench("cpu", repeats=1, configs=[TINY], data_dir=mnist_dir, extras=False, sgemm_n=64)
    assert result["machine"]["training_threads"] == [1, "GPUMLP_THREADS"]
    assert "\nBLAS threads 1 (GPUMLP_THREADS)\n" in format_bench(result)
    check_result(result)
    assert result["data"] == "MNIST training images"
    assert result["process"] is None


def test_runs_on_the_strict_fake_device_crossing_only_through_the_backend(monkeypatch, mnist_dir):
    """The fake device refuses any host/device mix, so running at all proves the harness moves data
    only with be.asarray; and nothing is read back: the labels are checked on the host before they
    move, and the timed runs are the epochs' steps alone, without fit's end-of-epoch read, as
    PyTorch's loop is timed."""
    from standins.fake_device import counters

    counters.reset()
    result = run_bench("fake", repeats=1, configs=[TINY], data_dir=mnist_dir, extras=False, sgemm_n=32)
    check_result(result)
    assert result["machine"]["device"] == "fake"
    assert counters.to_host == 0
    assert counters.syncs >= 4  # before and after each timed call


def test_sgemm_on_numpy_is_positive():
    assert sgemm_gflops(MLP((784, 10)).be, n=64, repeats=2) > 0


def test_random_data_when_mnist_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUMLP_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    X, y, source = bench_data(tmp_path / "none", n=50)
    assert X.shape == (50, 784) and str(X.dtype) == "float32" and y.shape == (50,)
    assert source.startswith("random")


def test_process_costs_in_fresh_processes(mnist_dir):
    small = ("--epochs", "1", "--train-size", "500", "--val-size", "0", "--test-size", "100")
    costs = process_costs(mnist_dir, train_args=small)
    assert "--train-size 500" in costs["train_command"] and "<tmp>" in costs["train_command"]
    assert costs["train_peak_rss_mib"] > 10  # at least an interpreter with numpy
    assert costs["help_seconds"] > 0 and costs["load_mnist_seconds"] > 0


def test_script_rows_and_comparison():
    script = load_script("bench")
    assert script.parse_rows("1-3,8") == [0, 1, 2, 7]
    assert script.parse_rows(None) == list(range(len(CONFIGS)))
    for bad in ("0-2", "x", f"1-{len(CONFIGS) + 1}"):
        with pytest.raises(ConfigError, match="--rows: rows are 1 to"):
            script.parse_rows(bad)
    mine = {"rows": [{"name": c.name, "batch_size": 10, "images_per_s": 200.0, "gflops": 1.0} for c in CONFIGS[:6]]}
    theirs = {"rows": [{"name": c.name, "batch_size": 10, "images_per_s": r, "gflops": 1.0} for c, r in
                       zip(CONFIGS[:6], (100.0, 400.0, 100.0, 100.0, 100.0, 1.0))]}  # fmt: skip
    comp = script.comparison(mine, theirs, list(range(6)))
    assert [r["ratio"] for r in comp["rows"]] == [2.0, 0.5, 2.0, 2.0, 2.0, 200.0]
    assert comp["geomean_rust_rows"] == pytest.approx(math.exp((4 * math.log(2) + math.log(0.5)) / 5))
    assert "geometric mean" in script.format_comparison(mine, theirs, comp)


def test_compare_torch_without_torch_names_the_install(monkeypatch):
    script = load_script("bench")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(SystemExit, match="pip install torch"):
        script.load_torch_bench()


def test_torch_script_without_torch_is_one_line_and_exit_2(tmp_path):
    """scripts/bench_torch.py run on its own where PyTorch cannot be imported: the install hint in
    one line and exit 2, not an ImportError traceback."""
    code = (
        "import runpy, sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('no torch here')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = ['bench_torch.py', '--help']\n"
        f"runpy.run_path({str(SCRIPTS / 'bench_torch.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: ") and "pip install torch" in proc.stderr


def test_gpumlp_bench_never_imports_torch():
    source = (Path(__file__).resolve().parents[1] / "gpumlp" / "cli" / "bench.py").read_text()
    assert "import torch" not in source


def test_torch_script_on_a_tiny_configuration(mnist):
    pytest.importorskip("torch")
    bt = load_script("bench_torch")
    X, y = mnist[0][:400], mnist[1][:400]
    for cfg in (TINY, BenchConfig("tiny-ce", (784, 8, 10), "relu", "ce", 0.1, 32, 200)):
        result = bt.start_result(bt.torch.device("cpu"), 1, "MNIST", sgemm_n=64)
        row = bt.add_row(result, bt.time_config(cfg, bt.torch.device("cpu"), X, y, repeats=1))
        assert row["images"] == (200 if cfg.batch_size == 10 else 192)
        assert all(row[k] > 0 for k in ("images_per_s", "s_per_epoch", "gflops", "efficiency"))
        assert result["info"]["threads"] >= 1
        json.dumps(result)
        assert cfg.name in bt.format_torch(result)
    recipe = (("optimizer", "nesterov"), ("momentum", 0.9), ("dropout", 0.2), ("max_norm", 1.0))
    cfg = BenchConfig("tiny-recipe", (784, 8, 10), "relu", "ce", 0.1, 32, 200, 1, recipe)
    row = bt.time_config(cfg, bt.torch.device("cpu"), X, y, repeats=1)
    assert row["images_per_s"] > 0
    net = bt.network(cfg)
    assert any(isinstance(m, bt.nn.Dropout) and m.p == 0.2 for m in net)
    opt = bt.optimizer(cfg, net)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    augmented = BenchConfig("tiny-augment", (784, 8, 10), "relu", "ce", 0.1, 32, 200, 1, (("augment", "elastic"),))
    result = bt.start_result(bt.torch.device("cpu"), 1, "MNIST", sgemm_n=64)
    row = bt.add_row(result, bt.time_config(augmented, bt.torch.device("cpu"), X, y, repeats=1))
    assert row["images_per_s"] is None and "augmentation" in row["skipped"]
    assert "skipped" in bt.format_torch(result)


def test_torch_script_refuses_a_loss_or_rule_it_does_not_implement(mnist):
    """A loss or update rule registered in gpumlp but not written in the script is a skipped row
    saying so (one line), never another one timed under its name: here a second softmax loss
    (plain cross-entropy would be timed) and a second momentum rule (plain SGD would be)."""
    from dataclasses import replace

    from gpumlp import losses, optim

    pytest.importorskip("torch")
    bt = load_script("bench_torch")
    X, y = mnist[0][:400], mnist[1][:400]
    lion = type("Lion", (optim.Momentum,), {"name": "lion"})
    with losses.registered(replace(losses.LOSSES["ce"], name="ce-smoothed")), optim.registered(lion):
        for cfg, what in (
            (BenchConfig("smoothed", (784, 8, 10), "relu", "ce-smoothed", 0.1, 32, 200), "loss 'ce-smoothed'"),
            (BenchConfig("lion", (784, 8, 10), "relu", "ce", 0.1, 32, 200, 1, (("optimizer", "lion"),)), "rule 'lion'"),
        ):
            result = bt.start_result(bt.torch.device("cpu"), 1, "MNIST", sgemm_n=64)
            row = bt.add_row(result, bt.time_config(cfg, bt.torch.device("cpu"), X, y, repeats=1))
            assert row["images_per_s"] is None and what in row["skipped"] and "\n" not in row["skipped"]
            assert f"skipped: {row['skipped']}" in bt.format_torch(result)


def test_timed_pair_alternates_each_timed_run_after_a_warm_up():
    calls = []
    a = (lambda: calls.append("sync a"), lambda: calls.append("a"))
    b = (lambda: calls.append("sync b"), lambda: calls.append("b"))
    sa, sb = timed_pair(a, b, 3)
    assert len(sa) == len(sb) == 3 and all(t >= 0 for t in sa + sb)
    runs = [c for c in calls if not c.startswith("sync")]
    assert runs == ["a", "a", "b", "b"] * 3  # each timed run after an untimed one of the same work
    assert calls[:5] == ["a", "sync a", "a", "sync a", "b"]


def test_compare_torch_alternates_the_two_frameworks_row_by_row(monkeypatch, capsys, mnist_dir):
    """scripts/bench.py --compare torch end to end on two small rows: ratios of interleaved timings."""
    pytest.importorskip("torch")
    script = load_script("bench")
    small = (TINY, BenchConfig("tiny-augment", (784, 8, 10), "relu", "ce", 0.1, 32, 200, 1, (("augment", "shift"),)))
    monkeypatch.setattr(script, "CONFIGS", small)
    script.main(["--compare", "torch", "--repeats", "2", "--no-extras", "--json", "--data-dir", str(mnist_dir)])
    out = json.loads(capsys.readouterr().out)
    g, t = out["gpumlp"]["rows"], out["torch"]["rows"]
    assert [len(g[0]["seconds"]), len(t[0]["seconds"])] == [2, 2]
    assert out["comparison"]["rows"][0]["ratio"] == pytest.approx(g[0]["images_per_s"] / t[0]["images_per_s"])
    assert t[1]["images_per_s"] is None and out["comparison"]["rows"][1]["ratio"] is None


def test_gpumlp_bench_command_prints_the_table_and_json(monkeypatch, mnist_dir):
    """`gpumlp bench` through typer's CliRunner on one tiny row: the table, then --json."""
    from typer.testing import CliRunner

    import gpumlp.cli.bench
    from gpumlp.cli import commands as cli

    monkeypatch.setattr(gpumlp.cli.bench, "CONFIGS", (TINY,))
    args = ["bench", "--no-extras", "--repeats", "1", "--data-dir", str(mnist_dir)]
    out = CliRunner().invoke(cli.app, args)
    assert out.exit_code == 0, out.output
    assert "tiny" in out.output and "sgemm" in out.output and "efficiency" in out.output
    out = CliRunner().invoke(cli.app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert [r["name"] for r in result["rows"]] == ["tiny"] and result["rows"][0]["images_per_s"] > 0
    assert result["process"] is None
    out = CliRunner().invoke(cli.app, [*args, "--cuda-graph"])  # on the CPU: every row without, said once
    assert out.exit_code == 0, out.output
    assert "--cuda-graph: no row captured (cpu: CUDA graphs need --device cuda)" in out.output


def load_products(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # it takes parse_rows from scripts/bench.py beside it
    return load_script("products")


def test_products_are_the_flops_the_bench_counts(monkeypatch):
    """scripts/products.py lists each product of a step; their FLOPs are exactly the bench's
    per-image count times the batch, and the fused ones are those the optimiser fuses."""
    products = load_products(monkeypatch)
    for cfg in CONFIGS:
        listed = products.step_products(cfg)
        assert sum(2 * m * k * n for _, m, k, n, _ in listed) == cfg.batch_size * flops_per_image(cfg.sizes)
        n_layers = len(cfg.sizes) - 1
        assert len(listed) == 3 * n_layers - 1  # forward and weight gradient per layer, dA but the first
    rust5 = products.step_products(CONFIGS[4])  # 784-300-100-50-10: W0 and W1 (235,200 and 30,000 weights) fused
    assert [(m, k, n) for name, m, k, n, _ in rust5 if name.startswith("forward")][0] == (10, 784, 300)
    assert [name for name, *_, fused in rust5 if fused] == ["A1ᵀ·dZ into W (SGD step)", "A0ᵀ·dZ into W (SGD step)"]
    fast = next(c for c in CONFIGS if c.name.startswith("preset fast"))
    assert not any(fused for *_, fused in products.step_products(fast))  # Nesterov needs dW itself


def test_products_script_prints_each_rows_products(monkeypatch, capsys):
    products = load_products(monkeypatch)
    products.main(["--rows", "3", "--no-torch", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "3  784-10, batch 10" in out and "torch" not in out  # --no-torch: numpy's column only
    lines = [line.split() for line in out.splitlines()]
    listed = [cols for cols in lines if any(re.fullmatch(r"\d+×\d+×\d+", c) for c in cols)]
    assert [cols[-3] for cols in listed] == ["10×784×10", "784×10×10"]  # forward, then A0ᵀ·dZ
    assert all(float(cols[-2]) > 0 and float(cols[-1]) > 0 for cols in listed)  # µs, GFLOP/s
    step = next(cols for cols in lines if cols[:2] == ["all", "products"])
    assert float(step[-1]) == pytest.approx(sum(float(cols[-2]) for cols in listed), abs=0.11)


def test_products_script_times_pytorch_beside_numpy(monkeypatch, capsys):
    pytest.importorskip("torch")
    products = load_products(monkeypatch)
    products.main(["--rows", "3", "--rounds", "1"])
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    listed = [cols for cols in lines if any(re.fullmatch(r"\d+×\d+×\d+", c) for c in cols)]
    assert len(listed) == 2
    for cols in listed:  # numpy µs, GFLOP/s, torch µs, GFLOP/s, numpy ÷ torch time
        numpy_us, torch_us, ratio = float(cols[-5]), float(cols[-3]), float(cols[-1])
        assert ratio == pytest.approx(numpy_us / torch_us, rel=0.05, abs=0.01)


def test_bench_blas_without_mkl_names_the_install(monkeypatch, mnist_dir):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    script = load_script("bench_blas")
    real = blas._library
    monkeypatch.setattr(blas, "_library", lambda name: {} if name == "mkl" else real(name))  # as without MKL
    with pytest.raises(SystemExit, match=r"pip install 'gpumlp\[mkl\]'"):
        script.main(["--rows", "3", "--data-dir", str(mnist_dir)])


@pytest.mark.skipif(not blas.mkl_paths(), reason="pip install 'gpumlp[mkl]'")
def test_bench_blas_alternates_the_two_libraries(monkeypatch, mnist_dir, capsys):
    """scripts/bench_blas.py on a tiny row: each library's model trains through its own library."""
    monkeypatch.syspath_prepend(str(SCRIPTS))
    script = load_script("bench_blas")
    big = BenchConfig("big", (784, 700, 10), "relu", "ce", 0.1, 128, 256)  # 128·784·700: MKL's
    monkeypatch.setattr(script, "CONFIGS", (TINY, big))
    seen = []  # (row, the BLAS its model calls) of each model made
    real = script.prepare_config

    def prepare_config(cfg, be, X, y):
        seen.append((cfg.name, be.blas.name))
        return real(cfg, be, X, y)

    monkeypatch.setattr(script, "prepare_config", prepare_config)
    result = script.compare([0, 1], repeats=2, data_dir=mnist_dir)
    assert [r["name"] for r in result["rows"]] == ["tiny", "big"]
    assert all(r["numpy"] > 0 and r["mkl"] > 0 and r["ratio"] > 0 for r in result["rows"])
    ratios = [r["ratio"] for r in result["rows"]]  # both count as Rust rows: they are rows 1 and 2 here
    assert result["geomean_rust_rows"] == pytest.approx(math.sqrt(ratios[0] * ratios[1]))
    assert seen == [("tiny", "numpy"), ("tiny", "mkl"), ("big", "numpy"), ("big", "mkl")]
    out = script.format_compare(result)
    assert "MKL/numpy's" in out and "geometric mean" in out


# -- under load: scripts/bench.py --background-load (no timings asserted)


def test_background_load_starts_and_always_stops_its_busy_processes():
    from gpumlp.cli.bench_load import background_load

    with background_load(2, settle_s=0) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.returncode is not None for p in procs)
    with pytest.raises(KeyboardInterrupt), background_load(1, settle_s=0) as procs:
        raise KeyboardInterrupt  # Ctrl-C in the middle of a row
    assert procs[0].returncode is not None
    with background_load(1, limit_s=0.1, settle_s=0) as procs:
        procs[0].wait(timeout=30)  # bounded in time: it ends by itself
        assert procs[0].returncode == 0


def test_run_under_load_on_a_tiny_row(monkeypatch):
    from gpumlp.backends import blas_threads
    from gpumlp.cli.bench_load import format_under_load, run_under_load

    monkeypatch.setattr(blas_threads, "_auto", None)  # measured afresh per load; the process's choice comes back after
    monkeypatch.delenv("GPUMLP_THREADS", raising=False)
    seen = []
    original = blas_threads.training_threads

    def spy(recorded=None, largest=None, forced=None, forced_by="--threads"):
        seen.append((os.environ.get("GPUMLP_THREADS"), original(recorded, largest, forced, forced_by)[0]))
        return original(recorded, largest, forced, forced_by)

    monkeypatch.setattr(blas_threads, "training_threads", spy)
    result = run_under_load([0, 1], [TINY], repeats=1, sgemm_n=64)
    json.dumps(result)
    assert [level["background"] for level in result["loads"]] == [0, 1]
    assert result["loads"][1]["busy_alive_at_end"] == 1  # the busy process ran through the row
    for level in result["loads"]:
        (row,) = level["rows"]
        assert row["name"] == "tiny" and level["threads"] >= 1 and level["why"].startswith("auto: ")
        assert row["threads"] == 1  # what fit trained it with: its products are all small, whatever the load
        assert row["vs_one_thread"] == pytest.approx(row["images_per_s"] / row["one_thread_images_per_s"])
        assert len(row["one_thread_seconds"]) == 1
    assert result["loads"][0]["rows"][0]["slowdown"] == 1.0
    base, loaded = (lv["rows"][0]["images_per_s"] for lv in result["loads"])
    assert result["loads"][1]["rows"][0]["slowdown"] == pytest.approx(base / loaded)
    assert ("1", 1) in seen and any(env is None for env, _ in seen)  # each row also ran on one thread
    text = format_under_load(result)
    assert "load  config" in text and text.count(" tiny ") == 2 and "load 1: " in text


def test_background_load_option_parsing():
    bench = load_script("bench")
    assert bench.parse_loads("0,1,2") == [0, 1, 2]
    for bad in ("", "a", "-1", "0,,1", "65"):
        with pytest.raises(SystemExit, match="--background-load"):
            bench.parse_loads(bad)


def test_the_command_line_shows_the_settings_that_change_speed(monkeypatch):
    """A figure's command must say what it ran with: the thread count and library choices too."""
    from gpumlp.cli.bench import command_line

    monkeypatch.setenv("GPUMLP_THREADS", "1")
    monkeypatch.setenv("GPUMLP_BLAS", "numpy")
    monkeypatch.setattr("sys.argv", ["scripts/bench.py", "--rows", "1-5"])
    assert "GPUMLP_BLAS=numpy GPUMLP_THREADS=1 " in command_line()
    assert command_line().endswith("scripts/bench.py --rows 1-5")


def test_the_timed_steps_train_exactly_as_fit(mnist):
    """What a row times is fit's training: the prepared run's epochs give fit's parameters bit for bit."""
    import numpy as np

    from gpumlp.training.loop import fit, prepare_steps

    X, y = mnist[0][:305], mnist[1][:305]  # a last partial batch too
    recipe = {"optimizer": "nesterov", "momentum": 0.9, "weight_decay": 1e-4}
    by_fit, prepared = (MLP((784, 8, 10), "relu", "ce", seed=0) for _ in range(2))
    fit(by_fit, X, y, epochs=2, batch_size=10, lr=0.1, seed=3, **recipe)
    run = prepare_steps(prepared, X, y, epochs=2, batch_size=10, lr=0.1, seed=3, **recipe)
    assert np.array_equal(prepared.theta, MLP((784, 8, 10), "relu", "ce", seed=0).theta)  # nothing trained yet
    run()
    assert np.array_equal(by_fit.theta, prepared.theta)
