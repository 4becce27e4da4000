"""``--cuda-graph``: the training step captured once as a CUDA graph, then one launch per batch.

A step of 784-16-16-10 is 17 kernel launches of a few microseconds of work each: at batch 10 the GPU
waits on Python and the launch queue. Captured into a graph, a whole batch is one launch, which
gathers its own batch from the epoch's order:

    perm ← the epoch's permutation; pos ← 0      # (n,), (1,) device buffers: once an epoch
    graph.launch(), once per whole batch:         # one launch:
        Xs, Ys ← X[perm[pos : pos + b]], Y[…]     #   (b, 784), (b, 10) one gather kernel
        pos += b                                  #   one thread
        forward, loss, backward, update on Xs, Ys

What the graph replays is frozen at capture: the addresses of every array it touches and every
number passed to a kernel (the learning rate, SGD's fused α and β, momentum's μ, 1/b). So:

- the batch is read through buffers at fixed addresses: the training set X, Y, the epoch's order
  ``perm`` (copied in once an epoch) and the position ``pos`` on the device, which the graph
  advances itself, so each launch trains on the next batch with nothing done on the host;
- the parameters, gradients, optimiser state and the epoch's loss accumulator are updated in
  place at fixed addresses (a rollback or a resumed run copies into them, never rebinds them);
- the learning rate is a kernel argument: the step is captured again when it changes (a schedule:
  at most once an epoch; a capture costs about a millisecond and launches nothing);
- the last partial batch runs uncaptured (1/b differs), from a gather of its own;
- recipes whose every step passes other numbers to its kernels are refused (``refusal``): a rule
  that says so (its ``graph_refusal``: Adam's bias corrections change with t), dropout's masks and
  augmentation's distortions (they change with (epoch, batch)).

Capture follows ``fit``'s warm-up step and a first gather, so that compilation (NVRTC, CUB) and
first-use buffers are done before it. No memory is allocated while capturing: every array the step
creates is carved from one block reserved before the capture (``gpumlp.backends.capture``) and kept for
the graph's life. If capturing fails, training goes on without a graph, and says so once.

The step's products are cuBLAS gemms that gpumlp calls itself (``gpumlp.backends.cublas.raw_gemm``): CuPy
refuses every cuBLAS call of its own while a stream captures. Where the probe could not call cuBLAS
directly, ``--cuda-graph`` is ignored with that reason (``CupyBackend.graph_unavailable``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Options the graph cannot replay, and why: each passes per-step numbers to its kernels. (An update
# rule says so itself: its ``graph_refusal``, gpumlp/optim.py.)
UNCAPTURABLE = {
    "dropout": "dropout draws new masks every step from (epoch, batch)",
    "augment": "augmentation draws new distortions every step from (epoch, batch)",
}


def refusal(r: dict, rule) -> str | None:
    """Why ``--cuda-graph`` cannot capture the recipe ``r`` (``TrainConfig.recipe()``) stepped by the
    update rule ``rule`` (its class, ``gpumlp.optim.RULES[r["optimizer"]]``), or None."""
    on = {"dropout": r["dropout"] > 0, "augment": r["augment"] != "none"}
    for what, why, fix in ((f"--optimizer {rule.name}", rule.graph_refusal, "choose another --optimizer"),
                           *((f"--{k}", v, f"drop --{k}") for k, v in UNCAPTURABLE.items() if on[k])):  # fmt: skip
        if why:
            return (
                f"--cuda-graph cannot capture {what}: {why}, and a graph replays the numbers of its capture; "
                f"drop --cuda-graph (or {fix})"
            )
    return None


def graph_epoch(model, opt, X, Y, batch: int, train_epoch: Callable, log: Callable[[str], None]) -> Callable:
    """``train_epoch`` (``train._train_epoch``) with each whole batch of ``batch`` images of the device
    training set X (n, 784), Y (n, 10) one launch of a CUDA graph of its ``step``, where the device
    captures graphs; elsewhere ``train_epoch`` itself, after saying why."""
    if not model.be.captures_graphs:
        why = getattr(model.be, "graph_unavailable", None)  # a CUDA device whose probe refused direct cuBLAS
        log(
            f"--cuda-graph: ignored: {why}"
            if why
            else f"--cuda-graph: ignored on {model.be.name} (CUDA graphs need --device cuda)"
        )
        return train_epoch
    return GraphStep(model, opt, X, Y, batch, train_epoch, log).train_epoch


class GraphStep:
    """The training step on the next batch of the epoch's order, captured as a CUDA graph:
    ``train_epoch`` launches it once per whole batch; the partial last batch, or every batch after
    a failed capture, runs ``step`` itself."""

    def __init__(self, model, opt, X, Y, batch: int, train_epoch: Callable, log: Callable[[str], None]):
        self.be, self.opt, self.fallback, self.log = model.be, opt, train_epoch, log
        be, xp, dtype = model.be, model.be.xp, model.theta.dtype
        self.X, self.Y = X, Y  # (n, 784), (n, 10) the training set on the device, read by the graph
        self.perm = xp.zeros((X.shape[0],), dtype=np.int64)  # (n,) the epoch's order, copied in each epoch
        self.pos = xp.zeros((1,), dtype=np.int64)  # where the next batch starts in perm, advanced by the graph
        self.Xs = xp.zeros((batch, model.sizes[0]), dtype=dtype)  # (b, 784) the batch the step reads
        self.Ys = xp.zeros((batch, model.sizes[-1]), dtype=dtype)  # (b, 10)
        be.next_batch(X, Y, self.perm, self.pos, self.Xs, self.Ys)  # its first use compiles it: not while capturing
        # What one step creates (activations, deltas, …) is well under 4 arrays of (b, Σ sizes[1:]);
        # CupyBackend.capture takes a bigger block if not.
        self.nbytes = 4 * batch * sum(model.sizes[1:]) * np.dtype(dtype).itemsize + (1 << 20)
        self.graph = None
        self.key = None  # (lr, losses) of the graph: its frozen learning rate and accumulator
        self.failed = False

    def train_epoch(self, be, step, X, Y, perm, batch_size: int, lr: float, epoch: int, progress_every: int,
                    losses, report=None) -> None:  # fmt: skip
        """``train._train_epoch``'s pass over X, Y in the order of the device permutation ``perm``
        (n,): the order copied into the graph's buffer and its position zeroed (once an epoch),
        then one graph launch per whole batch (gather and ``step``), then the partial batch
        uncaptured. The graph is captured first where there is none yet for ``lr`` and ``losses``."""
        assert X is self.X and Y is self.Y, "the graph reads the training set it was made for"
        if not self.failed and (self.key is None or self.key[0] != lr or self.key[1] is not losses):
            self._capture(step, lr, losses)
        if self.failed:
            return self.fallback(be, step, X, Y, perm, batch_size, lr, epoch, progress_every, losses, report)
        b = self.Xs.shape[0]
        whole = X.shape[0] // b  # batches the graph trains
        losses[...] = 0  # (batch,) the epoch's loss, as _train_epoch
        self.perm[...] = perm  # (n,) device → device: the epoch's one copy for the graph
        self.pos[...] = 0
        for batch in range(1, whole + 1):
            self.graph.launch()  # the whole step, the batch's gather included: one launch
            self.opt.t += 1  # the host's step count, as ``Optimizer.step`` keeps it
            if report is not None and batch % progress_every == 0:  # a sync point, for a progress display only
                report(batch)
        rest = perm[whole * b :]  # (n mod b,) the last partial batch: 1/b differs, so uncaptured
        if rest.shape[0]:
            step(X.take(rest, axis=0), Y.take(rest, axis=0), lr, epoch, whole, losses)  # (r, 784), (r, 10)
            if report is not None and (whole + 1) % progress_every == 0:
                report(whole + 1)
        return None

    def _capture(self, step: Callable, lr: float, losses) -> None:
        """Record the gather of the next batch into Xs, Ys and one ``step`` on them (nothing runs);
        the Python side effects of that one call are undone (the optimiser's step count)."""
        t = self.opt.t

        def record():
            self.be.next_batch(self.X, self.Y, self.perm, self.pos, self.Xs, self.Ys)
            step(self.Xs, self.Ys, lr, 0, 0, losses)

        self.graph = None  # the old graph and its block go first
        try:
            self.graph = self.be.capture(record, self.nbytes)
            self.key = (lr, losses)
        except Exception as e:  # CuPy or the driver refused something in the step: train without a graph
            self.failed = True
            reason = " ".join(str(e).split()) or type(e).__name__
            self.log(f"--cuda-graph: capturing the training step failed ({reason}); training without a graph")
        finally:
            self.opt.t = t
