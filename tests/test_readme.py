"""README's code runs as printed: the onnxruntime snippet, on the shipped network and a real image."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S).group(1)


def run_onnx_snippet(tmp_path, image: str | None = None):
    """README's snippet, verbatim (or with ``image`` in place of docs/digits/three.png), against the
    shipped network exported by `gpumlp export`: its stdout."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("PIL")
    from typer.testing import CliRunner

    from gpumlp.cli import commands as cli

    model = tmp_path / "model.onnx"
    ckpt = ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz"
    result = CliRunner().invoke(cli.app, ["export", str(ckpt), str(model)])
    assert result.exit_code == 0, result.output
    (tmp_path / "docs").symlink_to(ROOT / "docs")
    code = python_block_after("## Use your network elsewhere")
    if image is not None:
        assert code.count('"docs/digits/three.png"') == 1
        code = code.replace('"docs/digits/three.png"', repr(image))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_the_onnx_snippet_reads_the_digit(tmp_path):
    assert run_onnx_snippet(tmp_path) == "[3]"


def test_the_onnx_snippet_reads_a_photo(tmp_path, mnist):
    """The same code on a photographed page (the photo test set's first printed digit, a JPEG):
    the digit, as `gpumlp predict` reads it."""
    import gpumlp
    from gpumlp.cli.predict import predict_images
    from standins.photo_sets import photo_set

    _, _, X, y = mnist
    data, label, _ = next(p for p in photo_set("test", X, y) if p[2] == "printed")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(data)
    shipped, _ = gpumlp.load(ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz")
    assert predict_images(shipped, [gpumlp.preprocess(photo)])[0]["digit"] == label
    assert run_onnx_snippet(tmp_path, str(photo)) == f"[{label}]"
