"""``gpumlp predict``'s ASCII preview: shown for a few images, left out past PREVIEW_UP_TO unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpumlp.cli import commands as cli
from gpumlp.cli.predict import PREVIEW_UP_TO

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = str(ROOT / "checkpoints" / "gpumlp-784-256-10-relu-ce.npz")
DIGITS = sorted(str(p) for p in (ROOT / "docs" / "digits").glob("*.png"))
PREVIEW = 28  # lines of one image's preview
runner = CliRunner()


@pytest.mark.parametrize(
    "n, option, previews",
    [(1, [], True), (PREVIEW_UP_TO, [], True), (PREVIEW_UP_TO + 1, [], False),
     (PREVIEW_UP_TO + 1, ["--preview"], True), (1, ["--no-preview"], False)],
)  # fmt: skip
def test_preview_by_default_only_for_a_few_images(n, option, previews):
    assert len(DIGITS) > PREVIEW_UP_TO
    images = DIGITS[:n]
    out = runner.invoke(cli.app, ["predict", SHIPPED, *images, *option])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    answers = [line for line in lines if "top 3:" in line]
    assert [a.split(":")[0] for a in answers] == images  # every image's answer line, in order, always
    assert len(lines) == n * (1 + PREVIEW * previews)
    assert ("@" in out.output) == previews
