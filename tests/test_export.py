"""trainer.export: the command line, and TFLite files that agree with the SavedModel."""

import os

import numpy as np
import pytest


@pytest.fixture(scope="module")
def workdir(trained_workdir):
    return trained_workdir


@pytest.fixture(scope="module")
def synthetic_images(synthetic_root):
    """Every synthetic photo at the model's 64 px, uint8 `[48, 64, 64, 3]`."""
    from trainer.data import decode, manifest

    train, valid = manifest.read_manifests(synthetic_root)
    paths = [*train["images"], *valid["images"]]
    return np.stack([decode.resize_image(decode.decode_image(p), 64).numpy() for p in paths])


@pytest.fixture(scope="module")
def saved_model(workdir):
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(workdir, "export"))


@pytest.fixture(scope="module")
def multiclass_workdir(tmp_path_factory):
    """An untrained three-class work directory (tests/test_serving.py's): config.json, best/."""
    from tests import test_serving

    config = test_serving.multiclass_config()
    folder = str(tmp_path_factory.mktemp("export_multiclass") / "workdir")
    return test_serving.write_workdir(folder, config, test_serving.build_network(config))


def tflite_probabilities(model_path, images):
    """Runs a .tflite model one image at a time: uint8 `[n, s, s, 3]` -> `[n, s, s, C]`."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=1)
    interpreter.allocate_tensors()
    (source,), (target,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(source["shape"]) == [1, *images.shape[1:]] and source["dtype"] == np.float32
    outputs = []
    for image in images:
        interpreter.set_tensor(source["index"], image[None].astype(np.float32) / 255.0)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(target["index"])[0])
    return np.stack(outputs)


def mask_iou(a, b):
    return np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1)


@pytest.mark.slow  # 18 s: converting to TFLite
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_float16_masks_agree_with_the_saved_model(
    workdir, saved_model, synthetic_images, tmp_path, run_module
):
    output = tmp_path / "nails.tflite"
    process = run_module(
        "export",
        f"--model={workdir}",
        "--format=tflite",
        "--quantize=float16",
        f"--output={output}",
        "--threshold=0.35",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    from trainer import export

    metadata = export.read_tflite_metadata(output.read_bytes())
    assert metadata["threshold"] == 0.35 and metadata["image_size"] == 64
    served = saved_model.signatures["serve_images"](images=synthetic_images)["probabilities"]
    tflite = tflite_probabilities(str(output), synthetic_images)
    assert mask_iou(tflite > 0.5, served.numpy() > 0.5) >= 0.99
    num_weights = sum(v.shape.num_elements() for v in saved_model.variables)
    assert os.path.getsize(output) < 2.5 * num_weights  # float16: 2 bytes a weight


def test_int8_without_a_data_root_says_so(tmp_path):
    from trainer import export, inference
    from trainer.errors import UserError

    trained = inference.TrainedModel(
        predict=None,
        image_size=64,
        path=str(tmp_path),
        kind="workdir",
        config={"run": {"data_root": str(tmp_path / "gone")}},
    )
    with pytest.raises(UserError, match="pass --data_root=DIR"):
        export.calibration_rows(trained, None)


def test_calibration_images_spread_over_the_manifest(synthetic_root):
    from trainer import export
    from trainer.data import manifest

    rows = manifest.read_manifests(synthetic_root)[0]
    images = export.calibration_images(rows, 64, count=4)
    assert images.shape == (4, 64, 64, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert export.default_output("w", "tflite", "int8") == os.path.join("w", "model_int8.tflite")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
def test_tflite_int8_converts_and_roughly_agrees(workdir, saved_model, synthetic_images, tmp_path):
    from trainer import export, inference

    network = inference.load_trained_model(workdir).keras_model
    calibration = synthetic_images[::6].astype(np.float32) / 255.0
    path = tmp_path / "int8.tflite"
    path.write_bytes(export.tflite_bytes(network, quantize="int8", calibration=calibration))
    served = saved_model.signatures["serve_images"](images=synthetic_images)["probabilities"]
    # A 2-step model's probabilities hug 0.5, the worst case for 8-bit activations.
    agreement = np.mean((tflite_probabilities(str(path), synthetic_images) > 0.5) == (served > 0.5))
    assert agreement >= 0.85


def test_an_export_given_as_the_workdir_gets_one_error_line(
    workdir, run_module, assert_one_error_line
):
    process = run_module("export", f"--model={workdir}/export", "--format=tflite")
    assert_one_error_line(process, "is an export already")


def test_the_threshold_is_a_number_or_the_evaluations_best(tmp_path):
    from trainer import export
    from trainer.errors import UserError

    assert export.chosen_threshold(None, str(tmp_path)) == 0.5
    assert export.chosen_threshold("0.25", str(tmp_path)) == 0.25
    for wrong in ("1.5", "0", "half"):
        with pytest.raises(UserError, match=f"--threshold={wrong} must be a number"):
            export.chosen_threshold(wrong, str(tmp_path))
    with pytest.raises(UserError, match="--threshold=best needs .*summary.json; run"):
        export.chosen_threshold("best", str(tmp_path))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text('{"best_threshold": 0.4}')
    assert export.chosen_threshold("best", str(tmp_path)) == 0.4


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
@pytest.mark.slow
def test_tflite_of_a_multiclass_model_matches_its_probabilities(
    multiclass_workdir, synthetic_images, tmp_path, run_module
):
    output = tmp_path / "classes.tflite"
    process = run_module(
        "export", f"--model={multiclass_workdir}", "--format=tflite", f"--output={output}"
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "3 classes: background, nail, tip; argmax" in process.stdout
    from trainer import export, inference

    metadata = export.read_tflite_metadata(output.read_bytes())
    assert (metadata["num_classes"], metadata["image_size"]) == (3, 64)
    assert metadata["class_names"] == ["background", "nail", "tip"]
    assert "threshold" not in metadata and "argmax" in metadata["output"]
    network = inference.load_trained_model(multiclass_workdir).keras_model
    expected = network(synthetic_images.astype(np.float32) / 255.0, training=False).numpy()
    tflite = tflite_probabilities(str(output), synthetic_images)
    assert tflite.shape == expected.shape == (len(synthetic_images), 64, 64, 3)
    np.testing.assert_allclose(tflite, expected, atol=1e-4)
    assert np.mean(tflite.argmax(axis=-1) == expected.argmax(axis=-1)) >= 0.999


# Slow: an export of its own through the CLI (~20 s); test_serving checks the same
# metadata of a multiclass export in-process in the fast suite.
@pytest.mark.slow
def test_a_multiclass_saved_model_records_the_workdirs_classes(
    multiclass_workdir, tmp_path, run_module
):
    output = tmp_path / "export"
    process = run_module("export", f"--model={multiclass_workdir}", f"--output={output}")
    assert process.returncode == 0, process.stderr[-3000:]
    from trainer import serving
    from trainer import workdir as workdir_lib

    metadata = workdir_lib.read_json(str(output / serving.METADATA_FILE))
    assert serving.task_of(metadata).names == ("background", "nail", "tip")
    assert metadata["signatures"][-1] == serving.LABELS_SIGNATURE


@pytest.mark.slow  # builds and exports a multiclass work directory (~15 s) for one line
def test_a_threshold_for_a_multiclass_model_gets_one_error_line(
    multiclass_workdir, run_module, assert_one_error_line
):
    process = run_module("export", f"--model={multiclass_workdir}", "--threshold=0.3")
    assert_one_error_line(process, "--threshold=0.3 applies to binary models only")
