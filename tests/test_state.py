"""The run-state schema (gpumlp/training/state.py): each field declared once, for training, run
files, the checkpoint's metadata checks and the metrics file alike."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import pytest

from gpumlp.errors import ConfigError
from gpumlp.training.state import EPOCH_FIELDS, METRICS_KEYS, TRAIN_STATE_FIELDS, EpochStats, TrainState


def test_every_epoch_field_has_its_check_and_the_metrics_keys_are_epoch_fields():
    assert set(EPOCH_FIELDS) == {f.name for f in fields(EpochStats)}
    assert set(METRICS_KEYS) <= set(EPOCH_FIELDS)


def test_the_train_state_a_checkpoint_holds_is_what_its_checks_name():
    state = TrainState(3, np.random.default_rng(0).bit_generator.state, best_epoch=2, best_score=0.9, blas_threads=1)
    d = state.to_dict()
    assert list(d) == list(TRAIN_STATE_FIELDS)
    assert all(check(d[k]) for k, (check, _) in TRAIN_STATE_FIELDS.items())
    stats = EpochStats(1, 0.5, 0.9, 1.0, 0.1, 10, 0.4, 1000.0)
    assert all(check(v) for k, v in asdict(stats).items() for check in [EPOCH_FIELDS[k][0]])
    back = TrainState.from_metadata({"train_state": d, "history": [asdict(stats)]})
    assert back.to_dict() == d and back.history == [stats] and back.optimizer == {"name": "sgd"}


def test_a_file_without_a_train_state_cannot_be_resumed():
    with pytest.raises(ConfigError, match="no training run to resume"):
        TrainState.from_metadata({"history": []})


@pytest.mark.parametrize("value", [True, -1, 2**63, 1.5, "3"])
def test_an_epoch_count_is_a_small_non_negative_integer(value):
    assert not TRAIN_STATE_FIELDS["epochs_done"][0](value)
