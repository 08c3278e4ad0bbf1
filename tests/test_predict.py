"""trainer.predict: masks and overlays at the original size, unreadable photos skipped.

Binary predictions come from the session's trained work directory; label maps
from an untrained three-class one (tests/test_serving.py's).
"""

import os

import cv2
import numpy as np
import pytest

# name -> (height, width) of the photos written from a synthetic one; None: not an image.
PHOTOS = {"same.png": (64, 64), "large.jpg": (100, 150), "small.png": (50, 40)}


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory, synthetic_root):
    """Photos of three sizes and formats, a corrupt PNG and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    source = cv2.imread(str(sorted((synthetic_root / "Images" / "1").iterdir())[0]))
    for name, (height, width) in PHOTOS.items():
        cv2.imwrite(str(folder / name), cv2.resize(source, (width, height)))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not a photo")
    return folder


@pytest.fixture(scope="module")
def trained(workdir):
    from trainer import inference

    return inference.load_trained_model(workdir)


def test_cli_writes_masks_and_overlays_at_the_original_size(
    workdir, photo_dir, tmp_path, run_module
):
    output = tmp_path / "out"
    process = run_module(
        "predict",
        f"--model={workdir}",
        f"--input={photo_dir}",
        f"--output={output}",
        "--tta",
        "--batch_size=2",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    warnings = [line for line in process.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1 and str(photo_dir / "corrupt.png") in warnings[0]
    assert "3 image(s)" in process.stdout and "1 unreadable" in process.stdout
    expected = {
        f"{os.path.splitext(n)[0]}_{kind}.png" for n in PHOTOS for kind in ("mask", "overlay")
    }
    assert set(os.listdir(output)) == expected
    for name, (height, width) in PHOTOS.items():
        stem = os.path.splitext(name)[0]
        mask = cv2.imread(str(output / f"{stem}_mask.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(output / f"{stem}_overlay.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert overlay.shape == (height, width, 3)


def test_masks_agree_with_the_exported_serving_signature(trained, workdir, photo_dir, tmp_path):
    from trainer import predict

    import tensorflow as tf

    paths = [str(photo_dir / name) for name in PHOTOS]
    assert predict.predict_files(trained, paths, str(tmp_path), photos_per_batch=3) == []
    loaded = tf.saved_model.load(os.path.join(workdir, "export"))
    encoded = [open(path, "rb").read() for path in paths]
    # One batch of three sizes: served zero-padded to the largest, with each size.
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    for i, (name, (height, width)) in enumerate(PHOTOS.items()):
        assert (served["height"][i], served["width"][i]) == (height, width)
        expected = served["probabilities"][i, :height, :width, 0].numpy() > 0.5
        mask_path = tmp_path / f"{os.path.splitext(name)[0]}_mask.png"
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED) > 0
        assert np.mean(mask == expected) >= 0.999, name


def test_tta_of_a_mirror_symmetric_photo_is_mirror_symmetric(trained):
    from trainer import predict

    half = np.random.default_rng(0).integers(0, 256, [2, 64, 32, 3], dtype=np.uint8)
    images = np.concatenate([half, half[:, :, ::-1]], axis=2)
    probabilities = predict.make_predict_fn(trained, tta=True)(images).numpy()
    np.testing.assert_allclose(probabilities, probabilities[:, :, ::-1], atol=1e-6)


def test_find_inputs_takes_files_folders_and_globs(photo_dir):
    from trainer import predict
    from trainer.errors import UserError

    images = sorted(str(photo_dir / name) for name in [*PHOTOS, "corrupt.png"])
    assert predict.find_inputs(str(photo_dir)) == images
    assert predict.find_inputs(str(photo_dir / "*.png")) == [p for p in images if ".png" in p]
    assert predict.find_inputs(str(photo_dir / "notes.txt")) == [str(photo_dir / "notes.txt")]
    with pytest.raises(UserError, match="matches no image file"):
        predict.find_inputs(str(photo_dir / "*.tiff"))


def test_output_names_stay_distinct():
    from trainer import predict

    paths = ["a/x.png", "a/x.jpg", "b/x.png", "a/y.png"]
    assert predict.output_names(paths) == ["x_png", "x_jpg", "x_png_2", "y"]


def test_a_glob_matching_nothing_gets_one_error_line(
    workdir, tmp_path, run_module, assert_one_error_line
):
    process = run_module(
        "predict", f"--model={workdir}", f"--input={tmp_path}/*.jpg", f"--output={tmp_path}/o"
    )
    assert_one_error_line(process, "matches no image file")


def test_unreadable_photos_are_returned_and_written_nowhere(trained, photo_dir, tmp_path):
    from trainer import predict

    corrupt = str(photo_dir / "corrupt.png")
    # main() exits 1 with one error line when every photo is skipped like this one.
    assert predict.predict_files(trained, [corrupt, corrupt], str(tmp_path)) == [corrupt] * 2
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # an export of its own (~15 s)
def test_predict_uses_the_threshold_stored_in_the_export(trained, photo_dir, tmp_path):
    from trainer import inference, predict, serving

    import tensorflow as tf

    photo = str(photo_dir / "large.jpg")
    export = str(tmp_path / "export")
    served = trained.predict(tf.constant(cv2.imread(photo)[None, :64, :64, ::-1].copy()))
    # A threshold that splits this model's probabilities in half, far from 0.5's mask.
    threshold = float(np.clip(np.median(served.numpy()), 0.01, 0.99))
    serving.export_saved_model(trained.keras_model, export, threshold=threshold)
    exported = inference.load_trained_model(export)

    assert predict.chosen_threshold(None, exported) == threshold
    assert predict.chosen_threshold(0.7, exported) == 0.7
    assert predict.chosen_threshold(None, trained) == 0.5
    output = str(tmp_path / "out")
    assert predict.predict_files(exported, [photo], output, threshold=threshold) == []
    outputs = exported.handle.signatures["serving_default"](
        image_bytes=tf.constant([open(photo, "rb").read()])
    )
    expected = outputs["mask"][0, ..., 0].numpy() == 1
    np.testing.assert_array_equal(expected, outputs["probabilities"][0, ..., 0].numpy() > threshold)
    mask = cv2.imread(os.path.join(output, "large_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    assert np.mean(mask == expected) >= 0.999


# ---------------------------------------------------------------- several classes


@pytest.fixture(scope="module")
def multiclass_workdir(tmp_path_factory):
    """An untrained three-class work directory with its export (tests/test_serving.py's)."""
    from tests import test_serving

    config = test_serving.multiclass_config()
    folder = str(tmp_path_factory.mktemp("predict_multiclass") / "workdir")
    return test_serving.write_workdir(folder, config, test_serving.build_network(config))


@pytest.fixture(scope="module")
def multiclass_trained(multiclass_workdir):
    from trainer import inference

    return inference.load_trained_model(multiclass_workdir)


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# Slow, with the two below: they build and export a multiclass work directory (~15 s).
@pytest.mark.slow
def test_multiclass_label_maps_and_overlays_with_a_legend(multiclass_trained, photo_dir, tmp_path):
    from trainer import colours, predict
    from trainer.data import decode

    paths = [str(photo_dir / name) for name in PHOTOS]
    assert predict.predict_files(multiclass_trained, paths, str(tmp_path), photos_per_batch=2) == []
    found = set()
    for path, (height, width) in zip(paths, PHOTOS.values()):
        stem = os.path.splitext(os.path.basename(path))[0]
        labels = _read(tmp_path / f"{stem}_mask.png")
        assert labels.shape == (height, width) and labels.dtype == np.uint8
        assert labels.max() < 3
        found.update(np.unique(labels).tolist())
        overlay = _read(tmp_path / f"{stem}_overlay.png")[..., ::-1]  # RGB
        photo = decode.decode_image(path).numpy()
        assert overlay.shape == photo.shape == (height, width, 3)
        # The legend: the strip's dark background over the bottom rows.
        legend = np.all(overlay[-2:] == predict.LEGEND_BACKGROUND_RGB, axis=-1)
        assert legend.mean() > 0.5 and np.any(overlay[-2:] != photo[-2:])
        # Above it (at most half the photo), the background is the photo untouched.
        top = height // 2
        background = labels[:top] == 0
        np.testing.assert_array_equal(overlay[:top][background], photo[:top][background])
    assert len(found) > 1, "the test needs a model that predicts several classes"
    # Every class's swatch is in the large photo's legend (its rows mostly the strip's grey).
    overlay = _read(tmp_path / "large_overlay.png")[..., ::-1]
    grey = np.all(overlay == predict.LEGEND_BACKGROUND_RGB, axis=-1).mean(axis=1)
    strip = overlay[grey > 0.3].reshape(-1, 3)
    for colour in colours.palette(3):
        assert np.any(np.all(strip == colour, axis=-1)), colour


@pytest.mark.slow
def test_a_multiclass_workdir_and_its_export_predict_the_same_labels(
    multiclass_trained, multiclass_workdir, photo_dir, tmp_path
):
    from trainer import inference, predict

    import tensorflow as tf

    export = os.path.join(multiclass_workdir, "export")
    exported = inference.load_trained_model(export)
    assert exported.task == multiclass_trained.task
    paths = [str(photo_dir / name) for name in PHOTOS]
    for trained, folder in ((multiclass_trained, "workdir"), (exported, "export")):
        assert predict.predict_files(trained, paths, str(tmp_path / folder), tta=True) == []
    assert predict.predict_files(exported, paths, str(tmp_path / "no_tta")) == []
    # One batch of three sizes, as a client sends it.
    served = exported.handle.signatures["serve_labels"](
        image_bytes=tf.constant([open(path, "rb").read() for path in paths])
    )
    for i, (name, (height, width)) in enumerate(PHOTOS.items()):
        mask = f"{os.path.splitext(name)[0]}_mask.png"
        from_workdir = _read(tmp_path / "workdir" / mask)
        assert np.mean(from_workdir == _read(tmp_path / "export" / mask)) >= 0.999, name
        expected = served["labels"][i, :height, :width, 0].numpy()
        assert np.mean(_read(tmp_path / "no_tta" / mask) == expected) >= 0.999, name


@pytest.mark.slow
def test_a_threshold_for_a_multiclass_model_gets_one_error_line(
    multiclass_workdir, photo_dir, tmp_path, run_module, assert_one_error_line
):
    process = run_module(
        "predict",
        f"--model={multiclass_workdir}",
        f"--input={photo_dir}",
        f"--output={tmp_path}/out",
        "--threshold=0.3",
    )
    assert_one_error_line(process, "--threshold=0.3 applies to binary models only")
    assert not os.path.exists(tmp_path / "out")
