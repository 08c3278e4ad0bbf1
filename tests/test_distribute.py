"""Strategy selection and its errors (the multi-device runs are in test_train.py)."""

import json

import trainer  # noqa: F401
from trainer import distribute
from trainer.errors import UserError

import pytest
import tensorflow as tf


def test_one_device_strategy_has_one_replica():
    strategy = distribute.make_strategy("one_device")
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy)


@pytest.mark.parametrize(
    "name, tf_config, message",
    [
        ("two_gpus", None, "choose one of one_device, mirrored"),
        ("mirrored", None, "found one device"),
        ("multi_worker_mirrored", None, "needs the TF_CONFIG"),
        ("multi_worker_mirrored", "{not json", "TF_CONFIG is malformed"),
        ("multi_worker_mirrored", json.dumps({"cluster": {}}), "TF_CONFIG is malformed"),
        (
            "multi_worker_mirrored",
            json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "ps", "index": 0}}),
            "is not a worker",
        ),
    ],
)
def test_unusable_strategies_are_user_errors(monkeypatch, name, tf_config, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        distribute.make_strategy(name)


def test_tpu_strategy_without_a_tpu_is_a_user_error():
    # Builds everything up to the resolver; the TPU system itself exists only on Cloud TPU.
    with pytest.raises(UserError, match="--strategy=tpu could not reach the TPU 'local'"):
        distribute.make_strategy("tpu", tpu="local")
