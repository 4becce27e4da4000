"""Give a checkpoint saved without one its own "not sure" floor, chosen as ``gpumlp train`` chooses it.

    python scripts/add_confidence_floor.py checkpoints/gpumlp-784-256-10-relu-ce.npz [MORE.npz ...]
    python scripts/add_confidence_floor.py CKPT --data-dir DIR --device cuda

For each file: the validation images its run used (``config.train_size`` images from the start of
its dataset's training file, then the next ``config.val_size``), the floor on them
(``gpumlp.training.evaluation.confidence_floor``: the top confidence that 1% of them fall below),
written into the metadata as ``confidence_floor`` atomically. The parameters, training state, every
other field and the format stay as they were: the file is read back and compared before the script
says it is done. A file that already has a floor gets it recomputed. Without ``--data-dir`` the
data is found as ``gpumlp train`` finds it ($GPUMLP_DATA_DIR, else the cache folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from gpumlp.data.load import load_dataset, split
from gpumlp.errors import GpumlpError
from gpumlp.formats.checkpoint import load, update_metadata
from gpumlp.training.evaluation import confidence_floor

FIELD = "confidence_floor"


def validation_images(meta: dict, path: Path, data_dir) -> np.ndarray:
    """(val_size, 784) host: the validation images of the run that trained ``meta``'s network."""
    config = meta.get("config") or {}
    train_size, val_size = config.get("train_size"), config.get("val_size")
    if not isinstance(train_size, int) or not isinstance(val_size, int) or val_size < 1:
        raise GpumlpError(
            f"{path} does not say which validation images its run used (config.train_size and config.val_size); "
            "only a network trained by `gpumlp train` with validation images can get its floor"
        )
    dataset = meta.get("dataset") or config.get("dataset") or "mnist"  # older files: mnist
    _, (X_val, _), _ = split(*load_dataset(dataset, data_dir), train_size, val_size, 0)
    return X_val


def add_floor(path: Path, data_dir=None, device: str = "cpu") -> dict:
    """Compute and write ``path``'s floor; then read the file back and check that nothing else changed."""
    model, before = load(path, device)
    floor = confidence_floor(model, validation_images(before, path, data_dir))
    params = {k: model.be.to_numpy(v) for k, v in model.params.items()}
    update_metadata(path, **{FIELD: floor})
    again, after = load(path)
    same = (
        {k: v for k, v in after.items() if k not in (FIELD, "state_arrays")}
        == {k: v for k, v in before.items() if k not in (FIELD, "state_arrays")}
        and after[FIELD] == floor
        and _same_arrays(params, {k: again.be.to_numpy(v) for k, v in again.params.items()})
        and _same_arrays(before["state_arrays"], after["state_arrays"])
    )
    if not same:
        raise GpumlpError(f"{path} reads back differently after adding its floor; restore it from version control")
    return floor


def _same_arrays(a: dict, b: dict) -> bool:
    """Same names, shapes, dtypes and bits."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", type=Path, help="gpumlp .npz or .json checkpoints, rewritten in place")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's files (as gpumlp train's --data-dir)")
    p.add_argument("--device", default="cpu", help="where to run the validation images: cpu, cuda, cuda:N")
    args = p.parse_args(argv)
    try:
        for path in args.checkpoints:
            floor = add_floor(path, args.data_dir, args.device)
            print(f"{path}: floor {100 * floor['value']:.2f}% on its {floor['images']} validation images")
    except GpumlpError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
