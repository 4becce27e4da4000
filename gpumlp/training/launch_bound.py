"""When the CPU trains faster than the GPU: launch-bound steps, small batches of narrow layers.

A training step without ``--cuda-graph`` is ~17 kernel launches whatever the network's size
(docs/gpu.md), so below some amount of work per step the GPU waits on the host and a CPU does
the same step sooner. Where that line lies is measured on a GPU, not assumed: until
``scripts/gpu_check.sh`` has measured it, ``LAUNCH_BOUND_MACS`` is None and no note is given.
``--device auto`` keeps choosing the GPU either way: the note only advises.
"""

from __future__ import annotations

# Multiply-adds per training step (batch × Σ a·b) under which an uncaptured CUDA step was measured
# slower than the CPU's, and the card and run that measured it. None: not measured yet.
LAUNCH_BOUND_MACS: int | None = None
MEASURED_ON: str | None = None


def step_macs(sizes, batch_size: int) -> int:
    """Multiply-adds of one forward pass of a batch: batch × Σ a·b over the layers (a in, b out)."""
    return batch_size * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def cpu_faster_note(sizes, batch_size: int, cuda: bool, cuda_graph: bool, threshold: int | None = None,
                    measured_on: str | None = None) -> str | None:  # fmt: skip
    """One line for ``gpumlp train`` advising ``--cuda-graph`` or ``--device cpu`` when the run is
    on CUDA without a graph and its steps are under the measured ``threshold`` (default
    ``LAUNCH_BOUND_MACS``); None otherwise, and always None while no threshold is measured."""
    threshold = LAUNCH_BOUND_MACS if threshold is None else threshold
    if threshold is None or not cuda or cuda_graph:
        return None
    macs = step_macs(sizes, batch_size)
    if macs >= threshold:
        return None
    where = f" on {measured_on or MEASURED_ON}" if (measured_on or MEASURED_ON) else ""
    return (
        f"note: {'-'.join(map(str, sizes))} at batch {batch_size} is {macs:,} multiply-adds a step, under the "
        f"{threshold:,} below which a GPU step without a graph was measured slower than the CPU's{where}: "
        "--cuda-graph (one launch a batch) or --device cpu trains faster"
    )
