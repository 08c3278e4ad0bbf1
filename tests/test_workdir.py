"""trainer.workdir: atomic writes everywhere, one-line errors for a full or unwritable disk."""

import errno
import json
import os
import shutil
import socket
import uuid

from trainer import workdir
from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf

from tests.files import mount_tmpfs, unmount


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs, mounted for the test and unmounted after."""
    target = tmp_path / "tmpfs"
    target.mkdir()
    mount_tmpfs(target, size="1m")
    yield target
    unmount(target)


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs, mounted for the test and unmounted after."""
    target = tmp_path / "read_only"
    target.mkdir()
    mount_tmpfs(target, size="1m", read_only=True)
    yield target
    unmount(target)


def _single_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


_REAL_GFILE = tf.io.gfile.GFile


class _FailingGFile:
    """A tf.io.gfile.GFile that writes half its bytes, then fails as a full disk does."""

    def __init__(self, path, mode):
        self._file = _REAL_GFILE(path, mode)
        self._path = path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def write(self, payload):
        self._file.write(payload[: len(payload) // 2])
        self._file.flush()
        raise tf.errors.ResourceExhaustedError(None, None, f"{self._path}; No space left on device")


# ---------------------------------------------------------------- compatibility


def _config(backbone="resnet18"):
    return {
        "model": {"arch": "unet", "backbone": backbone, "decoder_filters": (32, 16)},
        "train": {"optimizer": "radam", "precision": "float32"},
    }


def test_a_run_resumes_only_with_the_state_it_saved(tmp_path):
    workdir.check_workdir(str(tmp_path), _config(), overwrite=False)  # nothing there yet
    stored = _config()
    stored["model"]["decoder_filters"] = [32, 16]  # as config.json holds a tuple
    workdir.write_json(str(tmp_path / "config.json"), stored)
    workdir.check_workdir(str(tmp_path), _config(), overwrite=False)
    with pytest.raises(UserError) as error:
        workdir.check_workdir(str(tmp_path), _config("mobilenetv2"), overwrite=False)
    assert _single_line(error) == (
        f"--workdir={tmp_path} holds a run with model.backbone='resnet18', which cannot resume "
        "as 'mobilenetv2'; use another --workdir, or --overwrite to start over"
    )


def test_resuming_with_other_values_says_which(tmp_path, monkeypatch):
    stored = _config()
    stored["run"] = {"strategy": "tpu"}
    workdir.write_json(str(tmp_path / "config.json"), stored)
    warnings = []
    monkeypatch.setattr(
        workdir.logging, "warning", lambda *args: warnings.append(args[0] % args[1:])
    )
    stored["train"]["batch_size"] = 32
    workdir.write_json(str(tmp_path / "config.json"), stored)
    resumed = _config()
    resumed["train"]["batch_size"] = 64  # e.g. more replicas on the next machine
    resumed["train"]["new_field"] = 3  # not in the stored config.json: not listed
    workdir.check_workdir(str(tmp_path), resumed, overwrite=False)
    assert warnings == [
        f"Resuming the run in {tmp_path} with a changed config: train.batch_size: 32 -> 64"
    ]
    warnings.clear()
    workdir.check_workdir(
        str(tmp_path), dict(_config(), train=dict(stored["train"])), overwrite=False
    )
    assert warnings == []


def test_overwrite_removes_the_previous_run_only(tmp_path):
    for name in ("checkpoints", "best", "export", "tb", "samples", "cache", "eval"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    for name in ("config.json", "metrics.jsonl", "curves.png", "model.tflite"):
        (tmp_path / name).write_text("{}")
    workdir.check_workdir(str(tmp_path), _config("mobilenetv2"), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["cache", "eval", "model.tflite"]


# ---------------------------------------------------------------- atomic writes


def test_writes_replace_the_file_and_leave_no_temporary_file(tmp_path):
    path = str(tmp_path / "sub" / "result.json")  # the folder is made as needed
    workdir.write_json(path, {"b": 1, "a": [1, 2]})
    workdir.write_json(path, {"c": 3})
    assert json.loads(open(path).read()) == {"c": 3}
    assert workdir.read_json(path) == {"c": 3}
    workdir.write_text(str(tmp_path / "sub" / "notes.txt"), "naïve\n")
    workdir.write_bytes(str(tmp_path / "sub" / "raw.bin"), b"\x00\xff")
    assert (tmp_path / "sub" / "notes.txt").read_text(encoding="utf-8") == "naïve\n"
    assert (tmp_path / "sub" / "raw.bin").read_bytes() == b"\x00\xff"
    assert sorted(os.listdir(tmp_path / "sub")) == ["notes.txt", "raw.bin", "result.json"]


def test_a_failing_write_leaves_the_old_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    workdir.write_json(str(path), {"old": True})
    monkeypatch.setattr(tf.io.gfile, "GFile", _FailingGFile)
    with pytest.raises(UserError) as error:
        workdir.write_json(str(path), {"new": list(range(1000))})
    message = _single_line(error)
    assert message.startswith(f"cannot write {tmp_path}: the disk is full (needed about ")
    assert "summary.json" in message and "run the same command again" in message
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["summary.json"]


def test_ram_filesystem_gets_whole_files():
    folder = f"ram://test_workdir_{uuid.uuid4().hex}"
    path = f"{folder}/eval/summary.json"
    workdir.write_json(path, {"iou": 0.5})
    workdir.write_json(path, {"iou": 0.75})
    assert workdir.read_json(path) == {"iou": 0.75}
    assert tf.io.gfile.listdir(f"{folder}/eval") == ["summary.json"]


def test_temporary_names_are_unique_hidden_and_beside_the_target():
    names = {workdir.temporary_path("/w/cache/64px/a.pair") for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        folder, base = os.path.split(name)
        assert folder == "/w/cache/64px" and base.startswith(".a.pair.tmp-")
        assert socket.gethostname() in base and not base.endswith(".pair")


def test_object_stores_are_written_in_place(monkeypatch):
    """A bucket object appears whole when its upload ends: no temporary name, no rename."""
    opened = []

    class RecordingGFile:
        def __init__(self, path, mode):
            opened.append(path)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def write(self, payload):
            pass

    def no_rename(*args, **kwargs):
        raise AssertionError("a bucket object is not renamed")

    monkeypatch.setattr(tf.io.gfile, "GFile", RecordingGFile)
    monkeypatch.setattr(tf.io.gfile, "rename", no_rename)
    workdir.write_bytes("gs://bucket/run/cache/64px/a.pair", b"pixels")
    assert opened == ["gs://bucket/run/cache/64px/a.pair"]


def test_atomic_output_gives_a_path_to_writers_that_need_one(tmp_path):
    path = tmp_path / "curves.png"
    with workdir.atomic_output(str(path)) as temporary:
        assert temporary.endswith(".png") and os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "wb") as f:
            f.write(b"first")
        assert not path.exists()
    assert path.read_bytes() == b"first"

    with pytest.raises(RuntimeError, match="plotting failed"):
        with workdir.atomic_output(str(path)) as temporary:
            with open(temporary, "wb") as f:
                f.write(b"half")
            raise RuntimeError("plotting failed")
    assert path.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["curves.png"]


def test_atomic_output_to_a_non_local_path_copies_a_local_file():
    path = f"ram://test_workdir_{uuid.uuid4().hex}/curves.png"
    with workdir.atomic_output(path) as temporary:
        assert "://" not in temporary and temporary.endswith(".png")
        with open(temporary, "wb") as f:
            f.write(b"png")
    assert tf.io.gfile.GFile(path, "rb").read() == b"png"
    assert not os.path.exists(temporary)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "error, cause",
    [
        (OSError(errno.ENOSPC, "No space left on device"), "the disk is full"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "the disk is full"),
        (tf.errors.ResourceExhaustedError(None, None, "x; No space left"), "the disk is full"),
        (tf.errors.UnknownError(None, None, "x; No space left on device"), "the disk is full"),
        (OSError(errno.EROFS, "Read-only file system"), "the file system is read-only"),
        (OSError(errno.EACCES, "Permission denied"), "permission denied"),
        (tf.errors.PermissionDeniedError(None, None, "x; Permission denied"), "permission denied"),
    ],
)
def test_environment_failures_become_one_line_naming_the_folder(error, cause):
    with pytest.raises(UserError) as raised:
        with workdir.writing("runs/a/checkpoints", what="a checkpoint", needed_bytes=45 * 2**20):
            raise error
    message = _single_line(raised)
    assert message.startswith(f"cannot write runs/a/checkpoints: {cause} (")
    assert "needed about 45 MiB for a checkpoint" in message
    assert raised.value.__cause__ is error


def test_other_failures_pass_unchanged_and_the_size_is_computed_on_failure_only():
    def never():
        raise AssertionError("needed_bytes is computed only for the message")

    for error in (
        ValueError("a bug"),
        OSError(errno.ENOENT, "No such file"),
        tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor"),
    ):
        with pytest.raises(type(error)):
            with workdir.writing("w", what="x", needed_bytes=never):
                raise error
    with workdir.writing("w", what="x", needed_bytes=never):
        pass
    with pytest.raises(UserError, match=r"\(while writing the export\); give another disk$"):
        with workdir.writing("w", what="the export", fix="give another disk"):
            raise OSError(errno.ENOSPC, "No space left on device")


def test_check_free_space_fails_before_a_write_that_cannot_fit(tmp_path):
    workdir.check_free_space(str(tmp_path / "not" / "yet"), 1, what="the data cache")
    workdir.check_free_space("gs://bucket/cache", 10**18, what="the data cache")  # unknown
    with pytest.raises(UserError) as error:
        workdir.check_free_space(str(tmp_path), 2**60, what="the data cache", fix="use --x")
    message = _single_line(error)
    assert message.startswith(f"cannot write {tmp_path}: the data cache needs about ")
    assert message.endswith("free; use --x")


def test_format_bytes():
    assert workdir.format_bytes(512) == "512 bytes"
    assert workdir.format_bytes(3277) == "3.20 KiB"
    assert workdir.format_bytes(45 * 2**20) == "45 MiB"
    assert workdir.format_bytes(3 * 2**29) == "1.50 GiB"


def test_a_full_disk_leaves_the_old_file_and_says_so(full_disk):
    path = full_disk / "export" / "model.tflite"
    workdir.write_bytes(str(path), b"old model")
    with pytest.raises(UserError) as error:
        workdir.write_bytes(str(path), b"\0" * 2 * 2**20)
    message = _single_line(error)
    assert message.startswith(f"cannot write {full_disk / 'export'}: the disk is full (needed")
    assert "2.00 MiB for model.tflite" in message
    assert path.read_bytes() == b"old model"
    assert os.listdir(full_disk / "export") == ["model.tflite"]


def test_a_read_only_folder_says_so(read_only_disk):
    with pytest.raises(UserError) as error:
        workdir.write_json(str(read_only_disk / "eval" / "summary.json"), {})
    message = _single_line(error)
    assert message.startswith(f"cannot write {read_only_disk / 'eval'}: the file system is read")


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_one_restorable(full_disk):
    weights = tf.Variable(np.ones([50_000], np.float32))  # 200 KB a checkpoint
    step = tf.Variable(1, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(weights=weights, step=step)
    directory = str(full_disk / "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
    manager.save(checkpoint_number=1)
    with open(full_disk / "filler", "wb") as f:  # leaves less than one checkpoint free
        f.write(b"\0" * (shutil.disk_usage(full_disk).free - 50_000))

    weights.assign(weights * 2)
    step.assign(2)
    with pytest.raises(UserError) as error:
        with workdir.writing(directory, what="a checkpoint", needed_bytes=200_000):
            manager.save(checkpoint_number=2)
    assert _single_line(error).startswith(f"cannot write {directory}: the disk is full")

    weights.assign(weights * 0)
    latest = tf.train.latest_checkpoint(directory)
    assert latest == os.path.join(directory, "ckpt-1")
    checkpoint.restore(latest).assert_existing_objects_matched()
    assert int(step.numpy()) == 1 and np.all(weights.numpy() == 1.0)
