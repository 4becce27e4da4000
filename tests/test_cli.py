"""The command line: typer's CliRunner for runs, real subprocesses for the entry points."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.formats import checkpoint
from standins.entry_point import run_main

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "test"])
def test_help_lists_every_option_with_its_default(command):
    result = runner.invoke(cli.app, [command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    options = {
        "train": ["--device", "--layers", "--activation", "--loss", "--init", "--epochs", "--batch-size", "--lr",
                  "--train-size", "--val-size", "--test-size", "--seed", "--dtype", "--data-dir", "--save",
                  "--cuda-graph"],
        "test": ["--device", "--data-dir", "--test-size"],
    }[command]  # fmt: skip
    for option in options:
        assert option in result.output
    if command == "train":
        for default in ("784,16,16,10", "sigmoid", "mse", "[default: 10]", "[default: 3.0]", "[default: 50000]"):
            assert default in result.output


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "--layers", "785,10"], "--layers must start with 784"),
        (["train", "--layers", "784,x,10"], "'784,x,10': 'x' is not a layer size"),
        (["train", "--layers", "784,16,9"], "end with 10"),
        (["train", "--layers", "784,0,10"], "positive"),
        (["train", "--layers", "784,-3,10"], "positive"),
        (["train", "--batch-size", "50001"], "larger than --train-size 50000"),
        (["train", "--lr", "0"], "--lr must be a positive"),
        (["train", "--lr", "inf"], "--lr must be a finite number (got inf)"),
        (["train", "--val-size", "-5"], "--val-size must be 0 or more"),
        (["train", "--test-size", "10001"], "exceeds the 10000 test images"),
        (["train", "--optimizer", "adamw"], "unknown --optimizer 'adamw': choose one of sgd, momentum"),
        (["train", "--preset", "fastest"], "unknown --preset 'fastest': choose one of seed, fast, best"),
        (["train", "--dropout", "1"], "--dropout must be in [0, 1)"),
        (["train", "--schedule", "linear"], "unknown --schedule 'linear'"),
        (["train", "--augment", "blur"], "unknown --augment 'blur'"),
        (["train", "--patience", "3", "--val-size", "0"], "--patience needs validation images"),
        (["train", "--monitor", "f1"], "unknown --monitor 'f1'"),
        (["train", "--cuda-graph", "--optimizer", "adam"], "--cuda-graph cannot capture --optimizer adam: Adam's"),
        (["train", "--cuda-graph", "--dropout", "0.2"], "--cuda-graph cannot capture --dropout"),
        (["train", "--cuda-graph", "--augment", "shift"], "--cuda-graph cannot capture --augment"),
        (["train", "--device", "cuda:7"], "cuda"),
        (["train", "--dtype", "float16"], "unknown dtype"),
        (["train", "--save-every", "-1"], "--save-every must be 0 or more"),
        (["train", "--batch-size", "0"], "--batch-size must be at least 1"),
        (["train", "--lr", "-1"], "--lr must be a positive"),
        (["train", "--lr", "nan"], "--lr must be a finite number (got nan)"),
        (["train", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--activation", "gelu"], "unknown activation 'gelu': choose one of sigmoid, relu, tanh"),
        (["train", "--loss", "hinge"], "unknown loss"),
        (["train", "--device", "tpu"], "unknown device 'tpu': use auto, cpu, cuda or cuda:N"),
        (["train", "--train-size", "55000"], "exceeds the 60000"),
        (["train", "--save", "model.pt"], "must end in .npz or .json"),
        (["train", "--epochs", "two"], "--epochs"),
        (["train", "--no-such-option"], "No such option"),
        (["trian"], "No such command"),
        (["test"], "Missing argument"),
        (["test", "missing.npz"], "not found"),
        # issue 16: values that gave a traceback, or a wrong result with no error
        (["train", "--rotate", "inf"], "--rotate must be a finite number (got inf)"),
        (["train", "--augment", "elastic", "--elastic-alpha", "inf"], "--elastic-alpha must be a finite number"),
        (["train", "--augment", "elastic", "--elastic-sigma", "1e-320"], "--elastic-sigma must be at least 0.01"),
        (["train", "--augment", "elastic", "--elastic-sigma", "1e308"], "--elastic-sigma must be at most 1000"),
        (["train", "--shift", "inf"], "--shift must be a finite number"),
        (["train", "--shift", "100"], "--shift must be at most 28"),
        (["train", "--shear", "inf"], "--shear must be a finite number"),
        (["train", "--eps", "inf"], "--eps must be a finite number"),
        (["train", "--weight-decay", "inf"], "--weight-decay must be a finite number"),
        (["train", "--layers", "784,100000000,10"], "gpumlp trains at most 100,000,000 parameters"),
        (["train", "--layers", "784 1OO 10"], "'1OO' is not a layer size"),
        (["test", "m.npz", "--test-size", "-1"], "--test-size must be at least 1 (got -1)"),
        (["test", "m.npz", "--test-size", "0"], "--test-size must be at least 1 (got 0)"),
        (["train", "--epochs", "2.5"], "--epochs must be a whole number (got 2.5)"),
        (["train", "--seed", "1" + "0" * 400], "--seed must be at most 9,223,372,036,854,775,807"),  # an OverflowError
        (["serve", "m.npz", "--port", "70000"], "--port must be at most 65535 (got 70000)"),
        (["info", "m.npz", "--json=1"], "Option '--json' does not take a value. (see gpumlp info --help)"),
    ],
)
def test_user_errors_are_one_line_exit_2_no_traceback(monkeypatch, capsys, mnist_dir, tmp_path, args, fragment):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(
        monkeypatch, capsys, *args, *(["--data-dir", str(mnist_dir)] if args[0] == "train" else [])
    )
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err + out
    assert not any(tmp_path.iterdir()), "a failed command left files behind"


def test_an_unknown_gpumlp_blas_is_one_line_exit_2(monkeypatch, capsys, mnist_dir, tmp_path):
    from gpumlp.backends.cpu import CPU

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUMLP_BLAS", "atlas")
    monkeypatch.delitem(CPU.__dict__, "blas", raising=False)  # chosen again on first use, as in a fresh process
    code, out, err = run_main(monkeypatch, capsys, "train", "--epochs", "1", "--data-dir", str(mnist_dir))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err + out
    assert err.startswith("error: GPUMLP_BLAS='atlas' is not a BLAS gpumlp knows: use auto, mkl, numpy")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("command", ["train", "devices"])
def test_a_bad_gpumlp_threads_is_one_line_exit_2(monkeypatch, capsys, mnist_dir, tmp_path, command):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUMLP_THREADS", "lots")
    args = ["--epochs", "1", "--data-dir", str(mnist_dir)] if command == "train" else []
    code, out, err = run_main(monkeypatch, capsys, command, *args)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err + out
    assert err.startswith("error: GPUMLP_THREADS='lots' is not a thread count: use a whole number from 1 to 1024")
    assert not any(tmp_path.iterdir())


def test_devices_and_the_training_header_say_the_blas_threads(monkeypatch, capsys, mnist_dir, tmp_path):
    monkeypatch.setenv("GPUMLP_THREADS", "1")
    code, out, _ = run_main(monkeypatch, capsys, "devices")
    assert code in (0, None) and "cpu threads    1 BLAS thread (GPUMLP_THREADS; GPUMLP_THREADS=N to choose)" in out
    small = ["--epochs", "1", "--train-size", "500", "--val-size", "0", "--test-size", "0"]
    code, out, _ = run_main(monkeypatch, capsys, "train", *small, "--save", str(tmp_path / "m.npz"))
    assert code in (0, None) and ", 1 BLAS thread (GPUMLP_THREADS)\n" in out
    code, out, _ = run_main(monkeypatch, capsys, "train", *small, "--save", str(tmp_path / "m.npz"), "--threads", "2")
    assert code in (0, None) and ", 2 BLAS threads (--threads)\n" in out  # the option wins over the variable
    assert checkpoint.read_metadata(tmp_path / "m.npz")["train_state"]["blas_threads"] == 2
    code, _, err = run_main(monkeypatch, capsys, "train", *small, "--save", str(tmp_path / "n.npz"), "--threads", "0")
    assert code == 2 and err == "error: --threads must be a whole number from 1 to 1024 (got 0)\n"
    assert not (tmp_path / "n.npz").exists()


def test_cuda_here_is_one_line_exit_2(monkeypatch, capsys):
    """This machine has no usable GPU (with or without CuPy installed)."""
    code, _, err = run_main(monkeypatch, capsys, "train", "--device", "cuda", "--epochs", "1")
    if code == 0:
        pytest.skip("a CUDA GPU is usable here")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "cuda" in err.lower()


def test_unwritable_save_folder_fails_before_training(monkeypatch, capsys, tmp_path, mnist_dir):
    (tmp_path / "file").write_text("x")
    code, out, err = run_main(
        monkeypatch, capsys, "train", "--data-dir", str(mnist_dir), "--save", str(tmp_path / "file" / "m.npz")
    )
    assert code == 2 and "not a writable folder" in err and "epoch" not in out


def test_train_then_test_report_the_same_accuracy(tmp_path, mnist_dir):
    """The default configuration for one epoch on 50000 real images through the CLI: per-epoch
    lines, ≥ 90% test accuracy, and a checkpoint that ``gpumlp test`` reads back to exactly the
    same accuracy."""
    ckpt = tmp_path / "ref.npz"
    trained = runner.invoke(cli.app, ["train", "--epochs", "1", "--data-dir", str(mnist_dir), "--save", str(ckpt)])
    assert trained.exit_code == 0, trained.output
    assert re.search(
        r"epoch 1/1  loss \d\.\d{4}  val loss \d\.\d{4}  val acc +\d+\.\d\d%  lr 3  \d+\.\d\ds", trained.output
    )
    assert f"saved {ckpt}" in trained.output
    acc = re.search(r"test accuracy (\d+\.\d\d)% \(10000 images\)", trained.output).group(1)
    assert float(acc) >= 90.0
    tested = runner.invoke(cli.app, ["test", str(ckpt), "--data-dir", str(mnist_dir)])
    assert tested.exit_code == 0, tested.output
    assert f"test accuracy {acc}% (10000 images)" in tested.output


def test_json_checkpoint_through_the_cli(tmp_path, mnist_dir):
    ckpt = tmp_path / "small.json"
    args = ["train", "--epochs", "2", "--train-size", "5000", "--val-size", "1000", "--test-size", "2000"]
    trained = runner.invoke(cli.app, [*args, "--layers", "784,32,10", "--activation", "relu", "--loss", "ce",
                                      "--lr", "0.1", "--data-dir", str(mnist_dir), "--save", str(ckpt)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    acc = re.search(r"test accuracy (\d+\.\d\d)% \(2000 images\)", trained.output).group(1)
    assert float(acc) > 80
    tested = runner.invoke(cli.app, ["test", str(ckpt), "--data-dir", str(mnist_dir), "--test-size", "2000"])
    assert tested.exit_code == 0, tested.output
    assert "MLP(784-32-10, relu, ce, float32" in tested.output
    assert f"test accuracy {acc}% (2000 images)" in tested.output


def test_default_save_path_is_under_checkpoints(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--epochs", "1", "--train-size", "100", "--val-size", "0", "--test-size", "0"]
    result = runner.invoke(cli.app, [*args, "--data-dir", str(mnist_dir), "--layers", "784,10"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "checkpoints" / "784-10-sigmoid-mse.npz").is_file()
    assert "test accuracy" not in result.output


def test_cuda_graph_on_the_cpu_trains_and_says_it_is_ignored(tmp_path, mnist_dir):
    args = ["train", "--epochs", "1", "--train-size", "100", "--val-size", "0", "--test-size", "0", "--quiet"]
    result = runner.invoke(
        cli.app, [*args, "--data-dir", str(mnist_dir), "--cuda-graph", "--save", str(tmp_path / "g.npz")]
    )
    assert result.exit_code == 0, result.output
    assert "sgd lr 3, CUDA graph" in result.output  # the run's line names the option
    assert "--cuda-graph: ignored on cpu (CUDA graphs need --device cuda)" in result.output
    assert (tmp_path / "g.npz").is_file()


@pytest.mark.parametrize("entry", [["gpumlp"], [sys.executable, "-m", "gpumlp"]])
def test_real_subprocess_help(entry):
    exe = entry if entry[0] != "gpumlp" else [str(Path(sys.executable).parent / "gpumlp")]
    out = subprocess.run([*exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "train" in out.stdout and "test" in out.stdout
    bare = subprocess.run(exe, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0 and "Usage" in bare.stdout


def test_resume_through_the_cli_and_info(tmp_path, mnist_dir):
    ckpt = tmp_path / "r.npz"
    small = ["--train-size", "2000", "--val-size", "500", "--test-size", "500", "--layers", "784,20,10"]
    first = runner.invoke(
        cli.app, ["train", "--epochs", "1", *small, "--data-dir", str(mnist_dir), "--save", str(ckpt)]
    )
    assert first.exit_code == 0, first.output
    more = runner.invoke(
        cli.app, ["train", "--resume", str(ckpt), "--epochs", "3", "--lr", "1.5", "--data-dir", str(mnist_dir)]
    )
    assert more.exit_code == 0, more.output
    assert "from epoch 1 of" in more.output and "epoch 2/3" in more.output and "epoch 1/3" not in more.output
    info = runner.invoke(cli.app, ["info", str(ckpt)])
    assert info.exit_code == 0, info.output
    assert "784-20-10, sigmoid hidden, mse output, float32" in info.output
    assert f"{784 * 20 + 20 + 20 * 10 + 10:,}" in info.output and "3 epochs in" in info.output
    assert re.search(r"test accuracy +\d+\.\d\d% \(500 images\)", info.output)
    as_json = runner.invoke(cli.app, ["info", str(ckpt), "--json"])
    d = __import__("json").loads(as_json.output)
    assert [e["lr"] for e in d["history"]] == [3.0, 1.5, 1.5] and d["train_state"]["epochs_done"] == 3
    assert d["n_params"] == 784 * 20 + 20 + 20 * 10 + 10 and d["config"]["train_size"] == 2000


def test_resume_refuses_contradicting_options(monkeypatch, capsys, tmp_path, mnist_dir):
    ckpt = tmp_path / "r.npz"
    args = ["train", "--epochs", "1", "--train-size", "1000", "--val-size", "0", "--test-size", "0"]
    assert runner.invoke(cli.app, [*args, "--data-dir", str(mnist_dir), "--save", str(ckpt)]).exit_code == 0
    before = ckpt.read_bytes()
    code, _, err = run_main(
        monkeypatch, capsys, "train", "--resume", str(ckpt), "--epochs", "2", "--layers", "784,30,10"
    )
    assert code == 2 and err.count("\n") == 1 and "--layers 784,30,10 contradicts the checkpoint" in err
    code, _, err = run_main(monkeypatch, capsys, "train", "--resume", str(ckpt), "--epochs", "1")
    assert code == 2 and "already has 1 epochs" in err
    assert ckpt.read_bytes() == before


def test_convert_round_trip_and_foreign_formats(tmp_path, mnist_dir, monkeypatch, capsys):
    """npz → json → npz keeps every parameter byte and the metadata; a gpumlp network exported to
    the Rust project's JSON loads back in `gpumlp test` with the same accuracy."""
    import numpy as np

    from gpumlp.formats import checkpoint

    src = tmp_path / "a.npz"
    args = ["train", "--epochs", "1", "--train-size", "3000", "--val-size", "0", "--test-size", "1000"]
    assert runner.invoke(cli.app, [*args, "--data-dir", str(mnist_dir), "--save", str(src)]).exit_code == 0
    for a, b in [(src, tmp_path / "b.json"), (tmp_path / "b.json", tmp_path / "c.npz")]:
        result = runner.invoke(cli.app, ["convert", str(a), str(b)])
        assert result.exit_code == 0, result.output
    with np.load(src) as x, np.load(tmp_path / "c.npz") as y:
        for k in ("W0", "b0", "W1", "b1", "W2", "b2"):
            assert x[k].tobytes() == y[k].tobytes()
    meta_a, meta_c = checkpoint.read_metadata(src), checkpoint.read_metadata(tmp_path / "c.npz")
    assert meta_c["history"] == meta_a["history"] and meta_c["test_accuracy"] == meta_a["test_accuracy"]

    rust = tmp_path / "rust.json"
    assert runner.invoke(cli.app, ["convert", str(src), str(rust), "--to", "rust"]).exit_code == 0
    assert set(__import__("json").loads(rust.read_text())) >= {"layers", "weights", "biases", "activation_function"}
    ours = runner.invoke(cli.app, ["test", str(src), "--data-dir", str(mnist_dir), "--test-size", "1000"])
    theirs = runner.invoke(cli.app, ["test", str(rust), "--data-dir", str(mnist_dir), "--test-size", "1000"])
    acc = re.search(r"test accuracy (\S+)%", ours.output).group(1)
    assert f"test accuracy {acc}%" in theirs.output

    relu = tmp_path / "relu.npz"
    args += ["--activation", "relu", "--layers", "784,8,10"]
    assert runner.invoke(cli.app, [*args, "--data-dir", str(mnist_dir), "--save", str(relu)]).exit_code == 0
    code, _, err = run_main(monkeypatch, capsys, "convert", str(relu), str(tmp_path / "r.json"), "--to", "nielsen")
    assert code == 2 and err.count("\n") == 1 and "relu" in err
    assert not (tmp_path / "r.json").exists()


def test_shipped_network_works_right_after_install(mnist_dir):
    """The committed checkpoint: trained by gpumlp on the training file only, ≥ 97.5% on the test set."""
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
    assert shipped.stat().st_size <= 5 * 2**20
    tested = runner.invoke(cli.app, ["test", str(shipped), "--data-dir", str(mnist_dir)])
    assert tested.exit_code == 0, tested.output
    acc = float(re.search(r"test accuracy (\S+)% \(10000 images\)", tested.output).group(1))
    assert acc >= 97.5
    info = runner.invoke(cli.app, ["info", str(shipped)])
    assert info.exit_code == 0 and f"{acc:.2f}% (10000 images)" in info.output


@pytest.mark.parametrize(
    "damage,fragment",
    [
        (lambda p: p.write_bytes(b""), "not the MNIST file"),  # empty
        (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00garbage"), "corrupt gzip"),
        (lambda p: p.write_bytes(__import__("gzip").compress(b"\x00\x00\x08\x03" + b"\x00" * 10)), "not the MNIST"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
    ids=["empty", "corrupt-gzip", "truncated", "directory"],
)
def test_bad_mnist_files_are_one_line_exit_2(tmp_path, mnist_dir, monkeypatch, capsys, damage, fragment):
    """A damaged data folder (one of the four files broken) through the real entry point."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte"):
        (data / f"{name}.gz").symlink_to(mnist_dir / f"{name}.gz")
    damage(data / "t10k-labels-idx1-ubyte.gz")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(monkeypatch, capsys, "train", "--epochs", "1", "--data-dir", str(data))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err and "Traceback" not in err and "epoch" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_shell_completion_is_available():
    # typer detects the user's shell from the process tree, which under pytest is python; its own
    # switch for tests makes --show-completion take the shell's name instead
    env = {**__import__("os").environ, "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "gpumlp"), "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "_gpumlp_completion" in out.stdout and "complete" in out.stdout


def test_test_report_json_plots_and_plot_command(tmp_path, mnist_dir, monkeypatch, capsys):
    import json

    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
    as_json = runner.invoke(cli.app, ["test", str(shipped), "--data-dir", str(mnist_dir), "--json", "--mistakes", "3"])
    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.stdout)
    assert report["accuracy"] == 0.98 and len(report["mistakes"]) == 3 and len(report["confusion"]) == 10
    text = runner.invoke(cli.app, ["test", str(shipped), "--data-dir", str(mnist_dir), "--plot", str(tmp_path / "p")])
    assert "true \\ pred" in text.output and "most confident mistakes" in text.output
    for name in ("confusion.png", "mistakes.png"):
        png = (tmp_path / "p" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    args = ["train", "--epochs", "2", "--train-size", "1000", "--val-size", "200", "--test-size", "0"]
    assert (
        runner.invoke(cli.app, [*args, "--data-dir", str(mnist_dir), "--save", str(tmp_path / "r.npz")]).exit_code == 0
    )
    plotted = runner.invoke(cli.app, ["plot", str(tmp_path / "r.npz.metrics.jsonl"), "--out", str(tmp_path / "c.png")])
    assert plotted.exit_code == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_main(monkeypatch, capsys, "plot", str(tmp_path / "missing.metrics.jsonl"))
    assert code == 2 and err.count("\n") == 1


def test_predict_images_and_mnist_index(tmp_path, mnist_dir, monkeypatch, capsys):
    import json

    root = Path(__file__).resolve().parents[1]
    shipped = str(root / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz")
    seven = str(root / "docs" / "digits" / "seven.png")
    out = runner.invoke(cli.app, ["predict", shipped, seven, "--index", "0", "--json", "--data-dir", str(mnist_dir)])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)["predictions"]
    assert [(r["source"], r["digit"], r["label"]) for r in rows] == [(seven, 7, None), ("mnist-test[0]", 7, 7)]
    text = runner.invoke(cli.app, ["predict", shipped, seven])
    assert text.exit_code == 0 and f"{seven}: 7   top 3: 7 " in text.output
    assert len(text.output.splitlines()) == 1 + 28 and "@" in text.output  # the ASCII preview
    for args, fragment in (([], "give one or more image files"), (["--index", "10000"], "out of range")):
        code, _, err = run_main(monkeypatch, capsys, "predict", shipped, *args, "--data-dir", str(mnist_dir))
        assert code == 2 and err.count("\n") == 1 and fragment in err
    (tmp_path / "notes.txt").write_text("not an image")
    code, _, err = run_main(monkeypatch, capsys, "predict", shipped, str(tmp_path / "notes.txt"))
    assert code == 2 and "not an image" in err and err.count("\n") == 1


def test_help_imports_neither_numpy_nor_cupy():
    """`gpumlp --help` stays light: the package's names are imported on first use."""
    code = (
        "import sys\n"
        "from gpumlp.cli import commands as cli\n"
        "sys.argv = ['gpumlp', '--help']\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "heavy = [m for m in ('numpy', 'cupy', 'matplotlib', 'PIL') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("HEAVY []")


def test_two_runs_saving_to_one_path_the_second_is_refused_naming_the_first(tmp_path, mnist_dir):
    """Before: both printed "saved" and one result silently vanished."""
    import os
    import signal

    exe = str(Path(sys.executable).parent / "gpumlp")
    ckpt = tmp_path / "same.npz"
    env = dict(os.environ, GPUMLP_DATA_DIR=str(mnist_dir))
    args = [exe, "train", "--epochs", "1000", "--train-size", "1000", "--val-size", "0", "-q", "--save", str(ckpt)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert first.stdout.readline().startswith("training ")  # the lock is taken before this line
        second = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    finally:
        first.send_signal(signal.SIGINT)
        _, first_err = first.communicate(timeout=60)
    assert second.returncode == 2 and second.stdout == ""
    assert second.stderr == (
        f"error: another gpumlp run (pid {first.pid}: gpumlp {' '.join(args[1:])}) is saving to {ckpt}; "
        "wait for it to end or choose another --save path\n"
    )
    assert first.returncode == 130 and f"are saved in {ckpt}" in first_err
