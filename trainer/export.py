"""Exports a work directory's best model as a SavedModel or a TensorFlow Lite file.

    python -m trainer.export --model=runs/demo --format=saved_model
    python -m trainer.export --model=runs/demo --format=tflite --quantize=float16
    python -m trainer.export --model=runs/demo --format=tflite --quantize=int8 --data_root=data

The network is rebuilt in float32 from WORKDIR/config.json with the best
validation weights (else the latest checkpoint).

saved_model  the serving signatures of trainer.serving (two for a binary model,
             three for several classes); default WORKDIR/export
tflite       the network alone at its fixed input size, for on-device apps:
             float32 `[1, s, s, 3]` in 0..1 -> float32 probabilities `[1, s, s, C]`,
             C = 1 (the foreground's) for a binary model, else one per class,
             class 0 the background (resizing, /255 and the argmax are the
             app's). Default WORKDIR/model.tflite, or
             model_float16.tflite / model_int8.tflite.
             --quantize=float16 halves the file (weights in float16);
             --quantize=int8 quarters it and calibrates activations on
             --num_calibration_images training images, from --data_root or the
             data root recorded in config.json. Inputs and outputs stay float32.

--threshold (default 0.5) is the probability above which a pixel is
foreground, for binary models only: a multi-class model's pixel is of its most
probable class, and the flag is refused. It is stored with the model: in the
SavedModel's assets.extra/trainer.json and its `mask` outputs, and in the
.tflite file's metadata, and predict uses it unless given its own --threshold.
`--threshold=best` takes the best_threshold of WORKDIR/eval/summary.json: run
trainer.evaluate first, on photos held out of training (the valid split, or
better a split of its own).

The .tflite file's metadata (entry "trainer", JSON) holds image_size, resize,
the classes (num_classes, class_names, ignore_label, as in the SavedModel's
trainer.json), a binary model's threshold, crop_side for a model trained on
squares cut from photos (`data.resize=crop`: the .tflite file is the network
on one square; the client tiles the photo), and the input and output
described in words.
"""

import json
import os

from trainer import classes, cli, inference, serving
from trainer import workdir as workdir_lib
from trainer.data import decode, manifest
from trainer.errors import UserError

import flatbuffers
import numpy as np
import pandas as pd
import tensorflow as tf
from absl import app, flags, logging

FORMATS = ("saved_model", "tflite")
TFLITE_METADATA_NAME = "trainer"
QUANTIZATIONS = ("float16", "int8")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines the command-line flags; called by the entry point only.

    Importing this module beside the other entry points then defines no flag twice.
    """
    flags.DEFINE_string("model", None, "The training work directory to export.")
    flags.DEFINE_enum("format", "saved_model", FORMATS, "What to write.")
    flags.DEFINE_enum("quantize", None, QUANTIZATIONS, "TFLite only: weight/activation types.")
    flags.DEFINE_string("output", None, "Folder (saved_model) or file (tflite) to write.")
    flags.DEFINE_string("data_root", None, "int8 only: data set for calibration images.")
    flags.DEFINE_integer("num_calibration_images", 32, "int8 only: images to calibrate on.")
    flags.DEFINE_string(
        "threshold",
        None,
        "Binary models only: probability above which a pixel is foreground, stored with the "
        "model for predict and apps: a number in (0, 1), or 'best' (WORKDIR/eval/summary.json's "
        "best_threshold, from trainer.evaluate); default 0.5.",
    )
    flags.mark_flags_as_required(["model"])


def default_output(workdir: str, output_format: str, quantize: str | None) -> str:
    """WORKDIR/export, or WORKDIR/model[_QUANTIZE].tflite."""
    if output_format == "saved_model":
        return os.path.join(workdir, workdir_lib.EXPORT_DIR)
    if not quantize:
        return os.path.join(workdir, workdir_lib.TFLITE_FILE)
    stem, extension = os.path.splitext(workdir_lib.TFLITE_FILE)
    return os.path.join(workdir, f"{stem}_{quantize}{extension}")


def chosen_threshold(value: str | None, workdir: str) -> float:
    """The threshold `--threshold` names: a number in (0, 1), 'best', or None for 0.5.

    Raises:
        UserError: not a number in (0, 1), or 'best' without an evaluation.
    """
    if value is None:
        return serving.DEFAULT_THRESHOLD
    if value == "best":
        summary_path = os.path.join(workdir, workdir_lib.EVAL_DIR, workdir_lib.EVAL_SUMMARY_FILE)
        if not tf.io.gfile.exists(summary_path):
            raise UserError(
                f"--threshold=best needs {summary_path}; run python -m trainer.evaluate "
                f"--model={workdir} --data_root=DATA first, or give a number"
            )
        return float(workdir_lib.read_json(summary_path)["best_threshold"])
    try:
        threshold = float(value)
    except ValueError:
        threshold = None
    if threshold is None or not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold={value} must be a number between 0 and 1, or 'best'")
    return threshold


def workdir_task(workdir: str) -> classes.Task:
    """The classes of a work directory, from its config.json alone: no model is built."""
    return classes.task(workdir_lib.read_json(os.path.join(workdir, workdir_lib.CONFIG_FILE)))


def check_threshold_applies(value: str | None, task: classes.Task) -> None:
    """Refuses `--threshold` for a multi-class model, before any slow work.

    Its pixels take the most probable class: no threshold would be applied,
    and storing one would tell apps otherwise.

    Raises:
        UserError: `--threshold` is given and the model has several classes.
    """
    if value is not None and not task.is_binary:
        raise UserError(
            f"--threshold={value} applies to binary models only; this model has "
            f"{task.num_classes} classes and the argmax decides each pixel's: leave it out"
        )


def tflite_metadata(trained: inference.TrainedModel, threshold: float) -> dict:
    """The "trainer" entry of a .tflite file: how to feed the network and read its output."""
    task = trained.task
    metadata = {
        "image_size": trained.image_size,
        "resize": trained.resize,
        **serving.task_metadata(task),
        "input": "float32 [1, s, s, 3], RGB in 0..1: the photo resized to s x s "
        "(resize 'pad': zero-padded at the bottom and right to a square first)",
    }
    if trained.resize == "crop":
        metadata["crop_side"] = trained.crop_side_px
        metadata["input"] = (
            "float32 [1, s, s, 3], RGB in 0..1: a square of s x s cut from the photo "
            "scaled (proportions kept) to a short side of crop_side; cover the photo "
            "with squares overlapping by a quarter and average their outputs"
        )
    if task.is_binary:
        metadata["threshold"] = threshold
        metadata["output"] = (
            "float32 [1, s, s, 1], foreground probability; foreground where > threshold"
        )
    else:
        metadata["output"] = (
            f"float32 [1, s, s, {task.num_classes}], the probability of each class of "
            "class_names (softmax, class 0 the background); a pixel's class is the argmax"
        )
    return metadata


def with_tflite_metadata(payload: bytes, metadata: dict) -> bytes:
    """The .tflite flatbuffer `payload` with `metadata` added as JSON, named "trainer".

    TFLite models carry named metadata buffers (the schema's `Model.metadata`);
    apps read them with the flatbuffers schema, or `read_tflite_metadata`.
    The TFLite Support metadata writer would do this, but it is not kept up
    for current TensorFlow, so the entry is added with TensorFlow's own schema
    bindings.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(payload, 0))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(metadata, sort_keys=True).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = TFLITE_METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    builder = flatbuffers.Builder(len(payload) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(payload: bytes) -> dict:
    """The "trainer" metadata of a .tflite file written by `with_tflite_metadata` ({} if none)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(payload, 0)
    for k in range(model.MetadataLength()):
        entry = model.Metadata(k)
        if entry.Name().decode() == TFLITE_METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return json.loads(bytes(data).decode())
    return {}


def calibration_rows(trained: inference.TrainedModel, data_root: str | None) -> pd.DataFrame:
    """The training manifest of `data_root`, else of the data root the run was trained on.

    Raises:
        UserError: no data root is given and the recorded one is not a folder here.
    """
    if data_root is None:
        data_root = trained.config.get("run", {}).get("data_root")
        if not data_root or not os.path.isdir(data_root):
            raise UserError(
                "--quantize=int8 calibrates on sample images, but the data root recorded in "
                f"{os.path.join(trained.path, workdir_lib.CONFIG_FILE)} ({data_root}) is not a "
                "folder here; pass --data_root=DIR"
            )
    train, _ = manifest.read_manifests(data_root, fallback_dir=trained.path)
    return train


def calibration_images(
    rows: pd.DataFrame, size_px: int, count: int, resize: str = "stretch", crop_side_px: int = 0
) -> np.ndarray:
    """float32 `[n, size_px, size_px, 3]` in 0..1: up to `count` rows spread over the manifest.

    As the model sees them (`decode.load_image`): under `resize="crop"` a square
    of each photo scaled to `crop_side_px`.
    """
    chosen = np.unique(np.linspace(0, len(rows) - 1, num=min(count, len(rows))).round().astype(int))
    images = [
        decode.load_image(rows["images"].iloc[i], size_px, resize, crop_side_px) for i in chosen
    ]
    return np.stack([image.numpy() for image in images]).astype(np.float32) / 255.0


def tflite_bytes(
    model: tf.keras.Model, *, quantize: str | None = None, calibration: np.ndarray | None = None
) -> bytes:
    """Converts a float32 Keras model to a TFLite flatbuffer.

    Args:
        model: float images `[b, s, s, 3]` in 0..1 -> probabilities `[b, s, s, C]`.
        quantize: None (float32), 'float16' or 'int8'.
        calibration: int8 only: float32 images `[n, s, s, 3]` covering the data.

    Returns:
        The .tflite file's bytes; its input is `[1, s, s, 3]` float32.
    """
    size_px = model.input_shape[1]
    function = tf.function(lambda images: model(images, training=False))
    concrete = function.get_concrete_function(
        tf.TensorSpec([1, size_px, size_px, 3], tf.float32, name="images")
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        if calibration is None or not len(calibration):
            raise ValueError("int8 quantization needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    elif quantize is not None:
        raise ValueError(f"quantize must be None, 'float16' or 'int8', got {quantize!r}")
    return converter.convert()


def described(task: classes.Task, threshold: float) -> str:
    """What decides a pixel in the written model, for the closing line."""
    if task.is_binary:
        return f"threshold {threshold:g}"
    return f"{task.num_classes} classes: {', '.join(task.names)}; argmax"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if inference.model_kind(FLAGS.model) != inference.WORKDIR:
        raise UserError(
            f"--model={FLAGS.model} is an export already; give the work directory it came "
            "from (the one holding config.json)"
        )
    if FLAGS.quantize and FLAGS.format != "tflite":
        raise UserError(f"--quantize={FLAGS.quantize} applies to --format=tflite only")
    check_threshold_applies(FLAGS.threshold, workdir_task(FLAGS.model))
    threshold = chosen_threshold(FLAGS.threshold, FLAGS.model)
    trained = inference.load_trained_model(FLAGS.model)
    output = FLAGS.output or default_output(trained.path, FLAGS.format, FLAGS.quantize)

    if FLAGS.format == "saved_model":
        serving.export_saved_model(
            trained.keras_model,
            output,
            threshold=threshold,
            resize=trained.resize,
            task=trained.task,
            crop_side_px=trained.crop_side_px,
        )
    else:
        calibration = None
        if FLAGS.quantize == "int8":
            rows = calibration_rows(trained, FLAGS.data_root)
            calibration = calibration_images(
                rows,
                trained.image_size,
                FLAGS.num_calibration_images,
                trained.resize,
                trained.crop_side_px,
            )
            logging.info("Calibrating int8 on %d training images", len(calibration))
        payload = tflite_bytes(
            trained.keras_model, quantize=FLAGS.quantize, calibration=calibration
        )
        metadata = tflite_metadata(trained, threshold)
        workdir_lib.write_bytes(output, with_tflite_metadata(payload, metadata))
    print(f"wrote {output} ({described(trained.task, threshold)})", flush=True)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
