"""A data root in a bucket: the scan, the check and the manifests through tf.io.gfile.

TensorFlow's in-memory filesystem (`ram://`, one per process) stands in for a
bucket: the same data set is copied there and prepared both ways, and every
result must be the local one with the root's prefix changed.
"""

import os
import shutil
import uuid

import trainer  # noqa: F401  (Keras 2 before TensorFlow loads)
from trainer import workdir as workdir_lib
from trainer.data import check, layout, manifest
from trainer.errors import UserError

import pandas as pd
import pytest
import tensorflow as tf

from tests.files import one_device, write_image, write_pair


def _copy_to_ram(local_root) -> str:
    """Copies a local folder, hidden entries too, to a fresh `ram://` folder."""
    ram_root = f"ram://bucket-{uuid.uuid4().hex}/data"
    for directory, _, files in os.walk(local_root):
        target = ram_root + directory[len(str(local_root)) :]
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(directory, name), f"{target}/{name}")
    return ram_root


@pytest.fixture
def roots(synthetic_root, tmp_path):
    """`(local_root, ram_root)`: the synthetic set plus files that give every kind of problem."""
    local = tmp_path / "data"
    shutil.copytree(synthetic_root, local)
    shutil.rmtree(local / "csv_file", ignore_errors=True)
    write_image(local / "Images/1/orphan.png")  # an image without a mask
    write_image(local / "Masks/2/lonely.png", mode="L")  # a mask without an image
    (local / "Images/1/notes.txt").write_text("not a photo")
    (local / "Masks/1/.ipynb_checkpoints").mkdir()
    (local / "Masks/1/.ipynb_checkpoints/x.png").write_bytes(b"junk")  # hidden: not reported
    write_pair(local, "Images/3/broken.png", "Masks/3/broken.png")
    (local / "Masks/3/broken.png").write_bytes(b"not a png")  # cannot be decoded
    write_pair(local, "Images/4/empty.png", "Masks/4/empty.png", value=0)  # a note
    return str(local), _copy_to_ram(local)


def _localised(value, ram_root: str, local_root: str):
    """`value` with the ram:// root replaced by the local one, in strings and frames."""
    if isinstance(value, pd.DataFrame):
        return value.map(lambda cell: _localised(cell, ram_root, local_root))
    if isinstance(value, list):
        return [_localised(item, ram_root, local_root) for item in value]
    if isinstance(value, layout.Problem):
        return layout.Problem(
            *(_localised(v, ram_root, local_root) for v in (value.path, value.message)),
            value.severity,
        )
    return value.replace(ram_root, local_root) if isinstance(value, str) else value


def _read(path) -> bytes:
    with tf.io.gfile.GFile(str(path), "rb") as file:
        return file.read()


def test_the_scan_of_a_bucket_matches_the_local_scan(roots):
    local_root, ram_root = roots
    local, ram = layout.scan(local_root), layout.scan(ram_root)
    assert ram.layout == local.layout == "images_masks"
    assert ram.pairs["images"].str.startswith(f"{ram_root}/Images/").all()
    pd.testing.assert_frame_equal(_localised(ram.pairs, ram_root, local_root), local.pairs)
    assert _localised(ram.problems, ram_root, local_root) == local.problems
    assert {p.severity for p in local.problems} == {"error", "note"}  # the orphans, the .txt


def test_the_check_of_a_bucket_matches_the_local_check(roots):
    local_root, ram_root = roots
    local, ram = layout.scan(local_root).pairs, layout.scan(ram_root).pairs
    local_problems = check.check_pairs(local)
    assert _localised(check.check_pairs(ram), ram_root, local_root) == local_problems
    assert {(os.path.basename(p.path), p.severity) for p in local_problems} >= {
        ("broken.png", "error"),
        ("empty.png", "note"),
    }


def test_prepare_writes_the_same_manifests_into_the_bucket(roots):
    local_root, ram_root = roots
    local = manifest.prepare(local_root)
    ram = manifest.prepare(ram_root)
    assert ram.csv_dir == f"{ram_root}/csv_file" and ram.problems_csv.startswith(ram_root)
    for split in ("train", "valid"):
        local_frame, ram_frame = getattr(local, split), getattr(ram, split)
        pd.testing.assert_frame_equal(_localised(ram_frame, ram_root, local_root), local_frame)
        # Paths in the manifests are relative to the data root: the files are equal.
        name = f"{split}.csv"
        assert _read(f"{ram.csv_dir}/{name}") == _read(os.path.join(local.csv_dir, name))
    assert ram.num_skipped == local.num_skipped == 3  # broken, orphan, lonely
    assert _localised(ram.problems, ram_root, local_root) == local.problems
    local_report = _read(local.problems_csv).decode()
    assert _read(ram.problems_csv).decode().replace(ram_root, local_root) == local_report


def test_read_manifests_of_a_bucket_prepares_then_reads_them(roots, monkeypatch):
    local_root, ram_root = roots
    expected = manifest.read_manifests(local_root)
    prepared = manifest.read_manifests(ram_root)
    assert tf.io.gfile.exists(f"{ram_root}/csv_file/train.csv")
    monkeypatch.setattr(check, "check_pairs", lambda *_, **__: pytest.fail("checked again"))
    reread = manifest.read_manifests(ram_root)
    for local_frame, ram_frames in zip(expected, zip(prepared, reread)):
        for ram_frame in ram_frames:
            pd.testing.assert_frame_equal(_localised(ram_frame, ram_root, local_root), local_frame)


def test_the_train_valid_layout_in_a_bucket_matches_case_insensitively(tmp_path):
    local = tmp_path / "data"
    for split, names in (("Train", "abcd"), ("VALID", "ef")):
        for name in names:
            write_pair(local, f"{split}/Images/{name}.png", f"{split}/masks/{name}_mask.png")
    ram_root = _copy_to_ram(local)
    local_scan, ram_scan = layout.scan(local), layout.scan(ram_root)
    assert ram_scan.layout == "train_valid"
    pd.testing.assert_frame_equal(
        _localised(ram_scan.pairs, ram_root, str(local)), local_scan.pairs
    )
    assert list(ram_scan.pairs["split"]) == ["train"] * 4 + ["valid"] * 2


def test_a_manifest_naming_a_file_missing_from_the_bucket_is_a_user_error(roots):
    _, ram_root = roots
    train, _ = manifest.read_manifests(ram_root)
    tf.io.gfile.remove(train["masks"].iloc[0])
    with pytest.raises(UserError, match=r"train\.csv lists 1 file\(s\) that do not exist"):
        manifest.read_manifests(ram_root)


def test_a_missing_bucket_folder_is_a_user_error():
    missing = f"ram://bucket-{uuid.uuid4().hex}/nothing"
    with pytest.raises(UserError, match=f"data root {missing} is not a folder"):
        manifest.read_manifests(missing)
    with pytest.raises(UserError, match=f"data root {missing} is not a folder"):
        layout.scan(missing + "/")


@pytest.mark.slow
def test_training_reads_its_data_from_a_bucket(roots, tmp_path, tiny_config):
    from trainer import train

    _, ram_root = roots
    workdir = str(tmp_path / "work")
    results = train.train_and_evaluate(
        tiny_config(train__steps=2), workdir=workdir, data_root=ram_root, strategy=one_device()
    )
    assert results["step"] == 2 and results["export_dir"] is not None
    assert tf.io.gfile.exists(f"{ram_root}/csv_file/valid.csv")  # prepared in the bucket
    assert os.listdir(os.path.join(workdir, "cache"))  # decoded from the bucket once


@pytest.mark.slow
def test_a_run_lives_in_a_bucket_from_training_to_predictions(roots, tiny_config):
    """Data, work directory, cache, evaluation, predictions and exports all on `ram://`."""
    from trainer import evaluate, export, inference, predict, serving, train

    _, ram_root = roots
    workdir = f"{ram_root}-runs/tiny"
    for steps in (2, 4):  # the second call resumes from the bucket's checkpoint
        results = train.train_and_evaluate(
            tiny_config(train__steps=steps),
            workdir=workdir,
            data_root=ram_root,
            strategy=one_device(),
        )
    assert results["step"] == 4 and results["export_dir"] == f"{workdir}/export"
    assert {"best", "cache", "checkpoints", "config.json", "export", "metrics.jsonl"} <= set(
        tf.io.gfile.listdir(workdir)
    )
    assert tf.io.gfile.listdir(f"{workdir}/cache/64px")  # the cache is in the bucket too
    assert tf.io.gfile.exists(f"{workdir}/export/{serving.METADATA_FILE}")

    trained = inference.load_trained_model(workdir)
    rows = evaluate.select_rows(ram_root, "valid", fallback_dir=workdir)
    counts = evaluate.count_confusions(trained, rows, one_device(), global_batch_size=4)
    summary = evaluate.summarize(rows, counts)
    output = evaluate.default_output_dir(trained)
    evaluate.write_results(output, summary, evaluate.per_image_table(rows, counts))
    assert tf.io.gfile.exists(f"{workdir}/eval/summary.json")

    photos = predict.find_inputs(f"{ram_root}/Images/1/*.png")
    assert photos and all(path.startswith(ram_root) for path in photos)
    predicted = f"{ram_root}-predicted"
    from_export = inference.load_trained_model(f"{workdir}/export")
    assert predict.predict_files(from_export, photos[:2], predicted) == []
    assert len(tf.io.gfile.listdir(predicted)) == 4  # a mask and an overlay each

    tflite = f"{ram_root}-exports/model.tflite"
    payload = export.tflite_bytes(trained.keras_model, quantize=None, calibration=None)
    workdir_lib.write_bytes(tflite, export.with_tflite_metadata(payload, {"image_size": 64}))
    assert export.read_tflite_metadata(_read(tflite))["image_size"] == 64
    again = serving.export_saved_model(trained.keras_model, f"{ram_root}-exports/saved")
    assert inference.load_trained_model(again).image_size == 64
