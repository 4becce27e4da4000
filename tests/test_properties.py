"""Property tests (hypothesis): round trips and finiteness over arbitrary shapes, sizes and inputs."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpumlp.activations import ACTIVATIONS
from gpumlp.data.idx import parse_idx
from gpumlp.formats import checkpoint
from gpumlp.losses import LOSSES
from gpumlp.model import MLP

IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def write_idx(array: np.ndarray) -> bytes:
    """IDX bytes written independently of gpumlp: magic, big-endian dims, big-endian body."""
    code = IDX_CODES[f"{array.dtype.kind}{array.dtype.itemsize}"]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@FAST
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
    )
)
def test_idx_write_read_round_trip(array):
    back = parse_idx(write_idx(array))
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)  # NaN == NaN here; bit patterns below
    assert back.tobytes() == array.astype(back.dtype).tobytes()


@FAST
@given(
    hidden=st.lists(st.integers(1, 12), min_size=0, max_size=3),
    dtype=st.sampled_from(["float32", "float64"]),
    suffix=st.sampled_from([".npz", ".json"]),
    activation=st.sampled_from(list(ACTIVATIONS)),
    loss=st.sampled_from(list(LOSSES)),
    seed=st.integers(0, 2**32 - 1),
)
def test_checkpoint_round_trip_any_sizes(hidden, dtype, suffix, activation, loss, seed):
    model = MLP((784, *hidden, 10), activation, loss, init="normal", seed=seed, dtype=dtype)
    with tempfile.TemporaryDirectory() as d:
        path = checkpoint.save(Path(d) / f"m{suffix}", model)
        back, _ = checkpoint.load(path)
    assert (back.sizes, back.dtype, back.activation, back.loss) == (model.sizes, dtype, activation, loss)
    assert back.theta.dtype == model.theta.dtype and back.theta.tobytes() == model.theta.tobytes()


@FAST
@given(
    X=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.just(784)), elements=st.floats(0, 1)),
    labels=st.lists(st.integers(0, 9), min_size=8, max_size=8),
    activation=st.sampled_from(list(ACTIVATIONS)),
    loss=st.sampled_from(list(LOSSES)),
    init=st.sampled_from(["normal", "lecun", "he", "xavier"]),
    dtype=st.sampled_from(["float32", "float64"]),
)
def test_loss_and_grads_finite_for_any_inputs_in_0_1(X, labels, activation, loss, init, dtype):
    model = MLP((784, 16, 10), activation, loss, init=init, seed=0, dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, grads = model.loss_and_grads(X, np.array(labels[: len(X)]))
    assert np.isfinite(value) and value >= 0
    assert all(np.all(np.isfinite(G)) for G in grads.values())
