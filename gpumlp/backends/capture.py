"""The memory of a captured CUDA graph: one block reserved before capturing, carved by a bump allocator.

``capture`` records ``record()``'s device work as a CUDA graph on a stream of its own (``--cuda-graph``,
``gpumlp.backends.graph``). Nothing may be allocated from CuPy's pool while a stream captures, and
no memory a graph uses may go back to the pool while the graph lives: every array ``record`` creates
is carved from one block that the returned graph holds.
"""

from __future__ import annotations

import contextlib


def capture(cuda, record, nbytes: int):
    """The device work of ``record()`` as a graph (``cuda``: ``cupy.cuda``), whose ``launch()``
    replays it on the current stream; captured on a stream of its own: nothing runs now. Arrays are
    carved from a block of ``nbytes`` reserved first, or a bigger one if that is too small."""
    while True:
        arena, stream = _Arena(cuda, nbytes), cuda.Stream(non_blocking=True)
        try:
            with stream, cuda.using_allocator(arena):
                stream.begin_capture()
                try:
                    record()
                except BaseException:  # end the capture, but say why record() failed: ending
                    with contextlib.suppress(Exception):  # raises too (cudaErrorStreamCaptureInvalidated)
                        stream.end_capture()
                    raise
                graph = stream.end_capture()
        except _ArenaFull:
            nbytes *= 4
            continue
        return _Captured(graph, arena)


class _Captured:
    """A ``cupy.cuda.Graph`` and the block its arrays were carved from (the graph holds no reference
    to its memory)."""

    def __init__(self, graph, arena):
        self.graph, self.arena = graph, arena

    def launch(self) -> None:
        self.graph.launch()  # on the current stream, queued after the work before it


class _ArenaFull(MemoryError):
    """A capture needed more than its block: ``capture`` tries again with a bigger one."""


class _Arena:
    """A bump allocator for ``cupy.cuda.using_allocator``: each request gets the next bytes of one
    block reserved before capturing, never reused while the block lives (rounded to 512 bytes, as
    CuPy's pool rounds)."""

    def __init__(self, cuda, nbytes: int):
        self.block, self.size, self.used = cuda.alloc(nbytes), nbytes, 0

    def __call__(self, nbytes: int):
        start, self.used = self.used, self.used + -(-nbytes // 512) * 512
        if self.used > self.size:
            raise _ArenaFull(f"a captured step needs more than {self.size} bytes")
        return self.block + start
