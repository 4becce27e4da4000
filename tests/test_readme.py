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


def test_the_onnx_snippet_reads_the_digit(tmp_path):
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
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[3]"
