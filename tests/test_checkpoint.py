"""trainer.checkpoint: save, resume, fall back past a damaged checkpoint, survive a full disk."""

import os

from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf

from tests.files import training_state


def _train_one_step(model, optimizer, step):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(tf.ones([1, 3])) ** 2)
    optimizer.apply_gradients(zip(tape.gradient(loss, model.weights), model.weights))
    step.assign_add(1)


def test_a_restart_resumes_step_weights_and_best_iou(tmp_path):
    state, model, optimizer, step = training_state(tmp_path)
    assert state.restore() == 0
    _train_one_step(model, optimizer, step)
    state.best_iou.assign(0.25)
    path = state.save(force=True)
    assert path == os.path.join(tmp_path, "checkpoints", "ckpt-1")

    resumed, resumed_model, _, resumed_step = training_state(tmp_path, seed=1)
    assert resumed.restore() == 1 and int(resumed_step.numpy()) == 1
    assert float(resumed.best_iou.numpy()) == 0.25
    for saved, restored in zip(model.weights, resumed_model.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())


def test_saves_wait_for_every_steps_unless_forced(tmp_path):
    state, model, optimizer, step = training_state(tmp_path, every_steps=3)
    assert state.save() is not None  # the first save is always due
    _train_one_step(model, optimizer, step)
    assert state.save() is None
    assert state.save(force=True) is not None


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    state, model, optimizer, step = training_state(tmp_path)
    for _ in range(2):
        _train_one_step(model, optimizer, step)
        state.save(force=True)
    with open(os.path.join(tmp_path, "checkpoints", "ckpt-2.data-00000-of-00001"), "r+b") as f:
        f.truncate(8)
    assert training_state(tmp_path)[0].restore() == 1


def test_no_restorable_checkpoint_names_the_work_directory_even_on_a_worker(tmp_path):
    state, model, optimizer, step = training_state(tmp_path)
    _train_one_step(model, optimizer, step)
    state.save(force=True)
    folder = os.path.join(tmp_path, "checkpoints")
    for name in os.listdir(folder):
        if name.startswith("ckpt-1."):
            os.remove(os.path.join(folder, name))
    worker = training_state(tmp_path, is_chief=False)[0]
    with pytest.raises(UserError) as error:
        worker.restore()
    message = str(error.value)
    assert message.startswith(f"no checkpoint in {folder} can be restored")
    assert "\n" not in message and "worker_checkpoints_" not in message


def test_a_worker_saves_to_a_temporary_folder_and_removes_it(tmp_path):
    worker, model, optimizer, step = training_state(tmp_path, is_chief=False)
    _train_one_step(model, optimizer, step)
    path = worker.save(force=True)
    assert not str(path).startswith(str(tmp_path))
    assert not os.path.exists(os.path.dirname(path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_a_save_on_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    state, model, optimizer, step = training_state(tmp_path)
    _train_one_step(model, optimizer, step)
    state.save(force=True)
    folder = os.path.join(tmp_path, "checkpoints")
    before = sorted(os.listdir(folder))

    def save_until_the_disk_fills(checkpoint_number, check_interval):
        # What TensorFlow leaves when the disk fills mid-save: a temporary
        # folder and a data file, never the index.
        os.makedirs(os.path.join(folder, f"ckpt-{checkpoint_number}_temp"))
        with open(os.path.join(folder, f"ckpt-{checkpoint_number}.data-00000-of-00001"), "wb"):
            pass
        raise tf.errors.ResourceExhaustedError(None, None, "ckpt; No space left on device")

    _train_one_step(model, optimizer, step)
    monkeypatch.setattr(state.manager, "save", save_until_the_disk_fills)
    with pytest.raises(UserError) as error:
        state.save(force=True)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {folder}: the disk is full (needed about ")
    assert "for a checkpoint); free space and run the same command again to resume" in message
    assert sorted(os.listdir(folder)) == before  # the failed save's files are gone
    assert training_state(tmp_path)[0].restore() == 1
