"""trainer.report: metrics.jsonl (with TensorBoard), a resumed run's records, curves.png."""

import errno
import json
import os

from trainer import report
from trainer.errors import UserError

import pytest
import tensorflow as tf


class _FakeWandbRun:
    def __init__(self):
        self.logged = []
        self.finished = False

    def log(self, values, step):
        self.logged.append((values, step))

    def finish(self):
        self.finished = True


def _records(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_records_go_to_metrics_jsonl_tensorboard_and_wandb(tmp_path):
    run = _FakeWandbRun()
    writer = report.MetricsWriter(str(tmp_path), enabled=True, wandb_run=run)
    writer.write(2, "train", {"loss": 0.5, "iou": 0.25, "images_per_sec": 10.0})
    writer.write(2, "valid", {"loss": 0.75, "iou": 0.125, "num_examples": 9})
    writer.close()
    assert _records(tmp_path) == [
        {"step": 2, "split": "train", "loss": 0.5, "iou": 0.25, "images_per_sec": 10.0},
        {"step": 2, "split": "valid", "loss": 0.75, "iou": 0.125, "num_examples": 9},
    ]
    assert run.logged[1] == ({"valid/loss": 0.75, "valid/iou": 0.125, "valid/num_examples": 9}, 2)
    assert run.finished
    (events,) = os.listdir(tmp_path / "tb")
    tags = {
        value.tag
        for event in tf.compat.v1.train.summary_iterator(str(tmp_path / "tb" / events))
        for value in event.summary.value
    }
    assert {"train/loss", "valid/iou"} <= tags


def test_a_disabled_writer_writes_nothing(tmp_path):
    writer = report.MetricsWriter(str(tmp_path), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.drop_after(0)
    writer.close()
    assert writer.summary_writer is None and os.listdir(tmp_path) == []


def test_a_resumed_run_drops_the_records_after_its_step(tmp_path):
    writer = report.MetricsWriter(str(tmp_path), enabled=True)
    for step in (2, 4, 6):
        writer.write(step, "train", {"loss": 1.0 / step})
    writer.drop_after(4)
    assert [r["step"] for r in _records(tmp_path)] == [2, 4]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "tb"]  # no temporary file


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "split": "train", "loss": 1.0}\n{"step": 4, "spl')
    assert report.read_metrics(str(path)) == [{"step": 2, "split": "train", "loss": 1.0}]


def test_curves_are_plotted_from_the_records(tmp_path):
    assert report.plot_curves(str(tmp_path)) is None  # nothing to plot yet
    writer = report.MetricsWriter(str(tmp_path), enabled=True)
    for step in (2, 4):
        writer.write(step, "train", {"loss": 1.0 / step, "iou": step / 10})
    writer.write(4, "valid", {"loss": 0.5, "iou": 0.3})
    path = report.plot_curves(str(tmp_path))
    assert path == os.path.join(tmp_path, "curves.png")
    image = tf.io.decode_png(open(path, "rb").read())
    assert image.shape[0] > 100 and image.shape[1] > 2 * image.shape[0]
    assert sorted(os.listdir(tmp_path)) == ["curves.png", "metrics.jsonl", "tb"]


def test_a_record_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    writer = report.MetricsWriter(str(tmp_path), enabled=True)

    def full_disk(path, mode):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf.io.gfile, "GFile", full_disk)
    with pytest.raises(UserError, match=f"^cannot write {tmp_path}: the disk is full"):
        writer.write(2, "train", {"loss": 1.0})
