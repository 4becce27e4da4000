"""``--cuda-graph``: the training step captured once as a CUDA graph, then one launch per batch.

A step of 784-16-16-10 is 17 kernel launches of a few microseconds of work each: at batch 10 the GPU
waits on Python and the launch queue. Captured into a graph, the whole step is one launch:

    Xs, Ys ← the batch (two device copies, outside the graph)      # (b, 784), (b, 10) static buffers
    graph.launch()                                                  # forward, loss, backward, update

What the graph replays is frozen at capture: the addresses of every array it touches and every
number passed to a kernel (the learning rate, SGD's fused α and β, momentum's μ, 1/b). So:

- the inputs live in static buffers ``Xs``, ``Ys``, filled before each launch;
- the parameters, gradients, optimiser state and the epoch's loss accumulator are updated in
  place at fixed addresses (a rollback or a resumed run copies into them, never rebinds them);
- the learning rate is a kernel argument: the step is captured again when it changes (a schedule:
  at most once an epoch; a capture costs about a millisecond and launches nothing);
- the last partial batch runs uncaptured (1/b differs);
- recipes whose every step passes other numbers to its kernels are refused (``refusal``): Adam's
  bias corrections change with t, dropout's masks and augmentation's distortions with (epoch, batch).

Capture follows ``fit``'s warm-up step, so that compilation (NVRTC, CUB) and first-use buffers are
done before it. No memory is allocated while capturing: every array the step creates is carved from
one block reserved before the capture (``CupyBackend.capture``) and kept for the graph's life. If
capturing fails, training goes on without a graph, and says so once.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A recipe the graph cannot replay, and why: each passes per-step numbers to its kernels.
UNCAPTURABLE = {
    "adam": "Adam's bias corrections change every step",
    "dropout": "dropout draws new masks every step from (epoch, batch)",
    "augment": "augmentation draws new distortions every step from (epoch, batch)",
}


def refusal(r: dict) -> str | None:
    """Why ``--cuda-graph`` cannot capture the recipe ``r`` (``TrainConfig.recipe()``), or None."""
    for what, on in (("adam", r["optimizer"] == "adam"), ("dropout", r["dropout"] > 0),
                     ("augment", r["augment"] != "none")):  # fmt: skip
        if on:
            return (
                f"--cuda-graph cannot capture {'--optimizer adam' if what == 'adam' else '--' + what}: "
                f"{UNCAPTURABLE[what]}, and a graph replays the numbers of its capture; drop --cuda-graph "
                f"(or {'choose sgd, momentum or nesterov' if what == 'adam' else 'drop --' + what})"
            )
    return None


def graph_step(model, opt, step: Callable, batch: int, log: Callable[[str], None]) -> Callable:
    """``step`` (``train._make_step``'s) replayed from a CUDA graph for each whole batch of ``batch``
    images, where the device captures graphs; elsewhere ``step`` itself, after saying why."""
    if not model.be.captures_graphs:
        log(f"--cuda-graph: ignored on {model.be.name} (CUDA graphs need --device cuda)")
        return step
    return GraphStep(model, opt, step, batch, log)


class GraphStep:
    """``step(Xb, Yb, lr, epoch, batch, losses)`` as ``train._make_step``'s: a whole batch is copied
    into the static buffers and the captured graph launched; a partial one runs ``step`` itself."""

    def __init__(self, model, opt, step: Callable, batch: int, log: Callable[[str], None]):
        self.be, self.opt, self.step, self.log = model.be, opt, step, log
        xp, dtype = model.be.xp, model.theta.dtype
        self.Xs = xp.zeros((batch, model.sizes[0]), dtype=dtype)  # (b, 784) what the graph reads
        self.Ys = xp.zeros((batch, model.sizes[-1]), dtype=dtype)  # (b, 10)
        # What one step creates (activations, deltas, …) is well under 4 arrays of (b, Σ sizes[1:]);
        # CupyBackend.capture takes a bigger block if not.
        self.nbytes = 4 * batch * sum(model.sizes[1:]) * np.dtype(dtype).itemsize + (1 << 20)
        self.graph = None
        self.key = None  # (lr, losses) of the graph: its frozen learning rate and accumulator
        self.failed = False
        self.captures = self.launches = 0  # for the tests and the device check

    def __call__(self, Xb, Yb, lr: float, epoch: int, batch: int, losses) -> None:
        if self.failed or Xb.shape[0] != self.Xs.shape[0]:
            return self.step(Xb, Yb, lr, epoch, batch, losses)  # the last partial batch, or no graph
        if self.key is None or self.key[0] != lr or self.key[1] is not losses:
            self._capture(lr, losses)
            if self.failed:
                return self.step(Xb, Yb, lr, epoch, batch, losses)
        self.Xs[...] = Xb  # (b, 784) device → device, outside the graph
        self.Ys[...] = Yb  # (b, 10)
        self.graph.launch()  # the whole step: one launch
        self.opt.t += 1  # the host's step count, as ``Optimizer.step`` keeps it
        self.launches += 1
        return None

    def _capture(self, lr: float, losses) -> None:
        """Record one step on the static buffers (nothing runs); the Python side effects of that
        one call are undone (the optimiser's step count)."""
        t = self.opt.t
        self.graph = None  # the old graph and its block go first
        try:
            self.graph = self.be.capture(lambda: self.step(self.Xs, self.Ys, lr, 0, 0, losses), self.nbytes)
            self.key = (lr, losses)
            self.captures += 1
        except Exception as e:  # CuPy or the driver refused something in the step: train without a graph
            self.failed = True
            reason = " ".join(str(e).split()) or type(e).__name__
            self.log(f"--cuda-graph: capturing the training step failed ({reason}); training without a graph")
        finally:
            self.opt.t = t
