"""The rule that says when the CPU trains faster than the GPU: silent until a threshold is measured."""

from __future__ import annotations

from gpumlp.training import launch_bound
from gpumlp.training.launch_bound import cpu_faster_note, step_macs

SEED = (784, 16, 16, 10)


def test_step_macs_by_hand():
    assert step_macs(SEED, 10) == 10 * (784 * 16 + 16 * 16 + 16 * 10) == 129_600
    assert step_macs((784, 800, 10), 1024) == 1024 * (784 * 800 + 800 * 10)


def test_no_note_until_a_threshold_is_measured():
    assert launch_bound.LAUNCH_BOUND_MACS is None  # nothing is claimed before a GPU has run
    assert cpu_faster_note(SEED, 10, cuda=True, cuda_graph=False) is None


def test_the_note_names_the_fixes_for_small_steps_on_cuda_only():
    threshold = 1_000_000  # an example: the real one comes from a GPU run
    note = cpu_faster_note(SEED, 10, cuda=True, cuda_graph=False, threshold=threshold, measured_on="a test card")
    assert note is not None and "\n" not in note
    assert "129,600 multiply-adds" in note and "1,000,000" in note and "a test card" in note
    assert "--cuda-graph" in note and "--device cpu" in note
    assert cpu_faster_note(SEED, 10, cuda=False, cuda_graph=False, threshold=threshold) is None  # on the CPU
    assert cpu_faster_note(SEED, 10, cuda=True, cuda_graph=True, threshold=threshold) is None  # already a graph
    assert cpu_faster_note((784, 800, 10), 1024, cuda=True, cuda_graph=False, threshold=threshold) is None  # big
    assert cpu_faster_note(SEED, 100, cuda=True, cuda_graph=False, threshold=1_296_000) is None  # at the line
    assert cpu_faster_note(SEED, 99, cuda=True, cuda_graph=False, threshold=1_296_000) is not None
