"""``gpumlp sweep``: hyper-parameter searches on Optuna. The space file (``space``), the study in
its storage and the claim of trials (``study``), the worker processes that train them
(``worker``), the command that runs them (``run``) and what a study found (``report``).

Optuna is an optional extra: ``require()`` says how to install it, in one line."""

from __future__ import annotations

from gpumlp.errors import SweepError

EXTRA_HINT = "pip install 'gpumlp[sweep]'"
PRUNERS = ("median", "halving", "none")  # --pruner (worker.make_pruner)
KEEP = ("best", "all", "none")  # --keep: which trials' networks are saved


def require() -> None:
    """Import Optuna, or raise a ``SweepError`` naming the extra that installs it."""
    try:
        import optuna  # noqa: F401
    except ImportError as e:
        raise SweepError(f"gpumlp sweep needs Optuna, which is not installed ({e}): {EXTRA_HINT}") from None
