"""The development and test photo sets (``standins.photo_sets``): handwritten and printed digits
photographed under uneven light, with shadows, a table at the paper's edge and specks of dirt."""

from __future__ import annotations

import pytest

from standins.photo_sets import SETS, STYLES, photo_set

pytest.importorskip("PIL")
pytest.importorskip("matplotlib")


def test_the_sets_are_reproducible_and_disjoint(mnist):
    _, _, X, y = mnist
    test, again = photo_set("test", X, y), photo_set("test", X, y)
    assert [data for data, _, _ in test] == [data for data, _, _ in again]
    assert len(test) >= 200 and {style for _, _, style in test} == set(STYLES)
    assert all(data[:2] == b"\xff\xd8" for data, _, _ in test)  # JPEG files
    (_, dev_first, dev_n), (_, test_first, test_n) = SETS["dev"], SETS["test"]
    # the MNIST digits each set draws (at most one per photo) never overlap
    assert dev_first >= test_first + len(STYLES) * test_n or test_first >= dev_first + len(STYLES) * dev_n
