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


def test_a_lost_peer_is_named_with_what_happened_to_it():
    heartbeat = tf.errors.UnavailableError(
        None,
        None,
        "Graph execution error:\n\nDetected at node while/CollectiveReduceV2 defined at:\n"
        "Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
        "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
        "The tasks have crashed.",
    )
    summary = distribute.lost_peer_summary(heartbeat)
    assert summary.startswith("lost contact with worker 1 (UnavailableError: Collective ops")
    assert "stopped sending heartbeats" in summary
    reset = tf.errors.UnavailableError(
        None,
        None,
        "recvmsg:Connection reset by peer\nAdditional GRPC error information from remote target "
        '/job:worker/replica:0/task:2 while calling RecvBuf: {grpc_status:14, grpc_message:"'
        'recvmsg:Connection reset by peer"}',
    )
    assert distribute.lost_peer_summary(reset) == (
        "lost contact with worker 2 (UnavailableError: recvmsg:Connection reset by peer)"
    )
    vague = tf.errors.CancelledError(None, None, "Cancelled")
    assert distribute.lost_peer_summary(vague) == (
        "lost contact with another worker (CancelledError: Cancelled)"
    )
