"""checkpoints/README.md describes every metadata key a checkpoint holds: each key a real run
writes (top level, per epoch, training state, optimiser) is named there in backticks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

import gpumlp

DOC = Path(__file__).resolve().parents[1] / "checkpoints" / "README.md"


def test_every_metadata_key_of_a_trained_checkpoint_is_documented(tmp_path, mnist_dir):
    cfg = gpumlp.TrainConfig(
        sizes=(784, 16, 10), epochs=2, train_size=1000, val_size=200, test_size=200, patience=1,
        optimizer="adam", lr=0.01,
    )  # fmt: skip
    gpumlp.run(cfg, data_dir=mnist_dir, save=tmp_path / "k.npz", log=lambda m: None)
    with np.load(tmp_path / "k.npz", allow_pickle=False) as z:
        meta = json.loads(z["metadata"].tobytes())
        arrays = [k.removeprefix("state.") for k in z.files if k.startswith("state.")]
    keys = set(meta) | set(meta["history"][0]) | set(meta["train_state"]) | set(meta["optimizer"])
    keys |= set(meta["optimizer"]["hyper"]) | set(arrays)
    documented = set(re.findall(r"`([^`\s]+)`", DOC.read_text()))
    assert keys - documented == set(), f"checkpoints/README.md does not name {sorted(keys - documented)}"
