"""The small state machines the training loop calls after each epoch: early stopping, the
rollback to the last complete epoch when one diverges or is interrupted, and the rule that says
when a run goes nowhere (``stalled``).

Both keep their copies of the weights on the device (device → device copies, no sync).
"""

from __future__ import annotations

import numpy as np

from gpumlp.errors import GpumlpError
from gpumlp.model import pack, unpack_into


class TrainingDiverged(GpumlpError):
    """NaN or Inf in an epoch's loss or parameters; the model is back at the last finite epoch."""

    def __init__(self, epoch: int, loss: float, lr: float):
        super().__init__(f"training diverged in epoch {epoch} (loss {loss}): try a lower --lr than {lr}")
        self.epoch = epoch


class Rollback:
    """Device copies of the parameters and optimiser state at the end of the last complete epoch:
    ``take`` after each epoch, ``restore`` when an epoch diverges or is interrupted."""

    def __init__(self, model, opt):
        self.opt = opt
        self.live = [model.theta, *opt.state_buffers.values()]
        self.copies = [a.copy() for a in self.live]
        self.t = opt.t

    def take(self) -> None:
        for copy, live in zip(self.copies, self.live):
            copy[...] = live
        self.t = self.opt.t

    def restore(self) -> None:
        for copy, live in zip(self.copies, self.live):
            live[...] = copy
        self.opt.t = self.t

    @staticmethod
    def check_finite(loss_sum: float, param_sum: float, epoch: int, n: int, lr: float) -> None:
        """Raise ``TrainingDiverged`` when the epoch's summed loss or the parameters' sum (host
        numbers, read once per epoch) is NaN or Inf."""
        if not (np.isfinite(loss_sum) and np.isfinite(param_sum)):
            raise TrainingDiverged(epoch, float(loss_sum) / n, lr)


class EarlyStopping:
    """Stop after ``patience`` epochs without a better validation score, and end on the best
    epoch's weights. Its record (best epoch and score, the epoch it stopped after, the epoch whose
    weights the model holds) lives in the run's ``TrainState``, so a checkpoint resumes it exactly.

    ``best`` is a device copy of the best epoch's flat parameter vector; the state arrays it hands
    a checkpoint hold the parameters back to back (n_params,), without the alignment gaps."""

    def __init__(self, model, state, patience: int, monitor: str):
        self.model, self.state, self.patience, self.monitor = model, state, patience, monitor
        be, arrays = model.be, state.arrays
        self.best = model.theta.copy()
        if "last_theta" in arrays:  # the model holds the best epoch's weights; training goes on from the last's
            unpack_into(be, model.theta, arrays["last_theta"], model.sizes)  # (n_params,) → flat
        elif "best_theta" in arrays:
            unpack_into(be, self.best, arrays["best_theta"], model.sizes)

    def update(self, epoch: int, val_accuracy: float, val_loss: float) -> bool:
        """Record epoch ``epoch``'s validation score; True when training should stop now."""
        s = self.state
        score = val_accuracy if self.monitor == "accuracy" else -val_loss  # higher is better
        if s.best_score is None or score > s.best_score:
            s.best_epoch, s.best_score = epoch, score
            self.best[...] = self.model.theta  # device → device
        elif epoch - s.best_epoch >= self.patience:
            s.stopped_epoch = epoch
        return bool(s.stopped_epoch)

    def state_arrays(self) -> dict:
        """What a checkpoint must hold beyond the parameters to resume: the best weights, unless
        they are the model's own (the last epoch was the best)."""
        if self.state.best_epoch == self.state.epochs_done:
            return {}
        return {"best_theta": pack(self.best, self.model.sizes, self.model.be.xp)}

    def finish(self) -> None:
        """End on the best epoch's weights, keeping the last epoch's for an exact resume."""
        s = self.state
        if s.best_epoch is not None and s.best_epoch != s.epochs_done:
            s.arrays.pop("best_theta", None)  # the model holds them now
            s.arrays["last_theta"] = pack(self.model.theta, self.model.sizes, self.model.be.xp)
            self.model.theta[...] = self.best
            s.weights_epoch = s.best_epoch


TINY_LR = 1e-3  # a stalled run below this lr is told to raise it; at or above, to lower it


def stalled(history, classes: int) -> str | None:
    """The one-line warning for a run that goes nowhere, else None: from epoch 2 on, the validation
    accuracy at chance (at most 1/classes + 2 points) and a training loss that has not moved
    (relative change under 1e-3 between the last two epochs). ``history``: ``EpochStats``, oldest
    first. Such a run can train for hours and exit 0 (784-100000-10: loss 0.5000, 9.91%)."""
    if len(history) < 2 or history[-1].epoch < 2 or history[-1].val_accuracy is None:
        return None
    last, before = history[-1], history[-2]
    if last.val_accuracy > 1 / max(classes, 2) + 0.02:
        return None
    if abs(last.train_loss - before.train_loss) >= 1e-3 * abs(before.train_loss):
        return None
    way = "larger" if last.lr < TINY_LR else "smaller"  # steps too small, else saturated or dead units
    return (
        f"warning: after epoch {last.epoch} the validation accuracy is {100 * last.val_accuracy:.2f}%, chance for "
        f"{classes} classes, and the training loss has not moved ({last.train_loss:.4f}): the network is not "
        f"learning (saturated or dead units, or steps too large or too small); try a {way} --lr than "
        f"{last.lr:g}, another --init, or fewer units in --layers"
    )
