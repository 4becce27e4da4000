"""The real ``gpumlp`` entry point, called in-process as the console script would call it."""

from __future__ import annotations

import sys

import pytest

from gpumlp.cli import commands as cli


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Call the real entry point ``gpumlp.cli.commands.main`` as the console script would."""
    monkeypatch.setattr(sys, "argv", ["gpumlp", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    return e.value.code, out.out, out.err
