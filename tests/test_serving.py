"""trainer.serving (the SavedModel export, as TensorFlow Serving runs it) and trainer.inference.

A tiny untrained U-Net (ResNet-18 encoder without ImageNet weights, 64 px)
stands in for a trained one: exporting and loading do not care how good it is.
A three-class one stands in for a multi-class run (tests/test_export.py and
tests/test_predict.py build their work directories with the helpers here).
"""

import os

from trainer import best, classes, inference, serving
from trainer import workdir as workdir_lib
from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf

SIZE_PX = 64
CLASS_NAMES = ("background", "nail", "tip")


def _config():
    from configs import demo_cpu

    config = demo_cpu.get_config()
    config.data.image_size = SIZE_PX
    config.model.decoder_filters = (32, 16, 16, 8, 8)
    return config


def multiclass_config():
    """The tiny U-Net's config with three softmax classes, as configs/demo_multiclass_cpu.py."""
    config = _config()
    config.model.num_classes = len(CLASS_NAMES)
    config.data.class_names = CLASS_NAMES
    return config


def build_network(config):
    """The config's untrained network at 64 px, the same weights on every call."""
    from trainer import model as model_lib

    tf.keras.utils.set_random_seed(0)
    return model_lib.build_model(config.model, image_size=SIZE_PX)


def write_workdir(workdir: str, config, network) -> str:
    """A work directory as training leaves it: config.json, best weights, export/."""
    workdir_lib.write_json(os.path.join(workdir, "config.json"), config.to_dict())
    best.save_best_weights(workdir, network, step=2, results={"iou": 0.5})
    serving.export_saved_model(network, os.path.join(workdir, "export"), task=classes.task(config))
    return workdir


@pytest.fixture(scope="module")
def network():
    """The tiny U-Net, float32 images `[b, 64, 64, 3]` in 0..1 -> probabilities."""
    return build_network(_config())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, network):
    """A work directory as training leaves it: config.json, best weights, export/."""
    return write_workdir(str(tmp_path_factory.mktemp("serving") / "workdir"), _config(), network)


@pytest.fixture(scope="module")
def saved_model(workdir):
    return tf.saved_model.load(os.path.join(workdir, "export"))


@pytest.fixture(scope="module")
def loaded(workdir):
    """The work directory loaded back for inference."""
    return inference.load_trained_model(workdir)


def _small_network():
    """A one-convolution network at 8 px: exports in a second."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input([8, 8, 3])
    outputs = tf.keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs)
    return tf.keras.Model(inputs, outputs)


# ---------------------------------------------------------------- export


def test_an_export_holds_the_model_and_its_metadata(workdir):
    export = os.path.join(workdir, "export")
    assert os.path.isfile(os.path.join(export, "saved_model.pb"))
    metadata = workdir_lib.read_json(os.path.join(export, serving.METADATA_FILE))
    signatures = ["serving_default", "serve_images"]
    expected = {"image_size": SIZE_PX, "signatures": signatures, "threshold": 0.5}
    binary = {"num_classes": 1, "class_names": ["foreground"], "ignore_label": None}
    assert metadata == {**expected, "resize": "stretch", **binary}
    assert sorted(os.listdir(workdir)) == ["best", "config.json", "export"]  # no leftovers


def test_a_loaded_export_is_callable_and_holds_the_networks_weights(network, saved_model):
    images = tf.random.stateless_uniform([2, SIZE_PX, SIZE_PX, 3], seed=(1, 2))
    np.testing.assert_allclose(saved_model(images), network(images), atol=1e-5)
    assert len(saved_model.variables) == len(network.variables)
    assert len(saved_model.trainable_variables) == len(network.trainable_variables)
    weights = sum(v.shape.num_elements() for v in saved_model.variables)
    assert weights == sum(v.shape.num_elements() for v in network.variables)


def test_an_export_replaces_the_previous_one_and_a_failed_one_keeps_it(tmp_path, monkeypatch):
    export = str(tmp_path / "export")
    serving.export_saved_model(_small_network(), export)
    serving.export_saved_model(_small_network(), export)
    assert os.listdir(tmp_path) == ["export"]
    before = sorted(os.listdir(export))

    def full_disk(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "variables; No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", full_disk)
    with pytest.raises(UserError) as error:
        serving.export_saved_model(_small_network(), export)
    message = str(error.value)
    assert message.startswith(f"cannot write {export}: the disk is full (needed about 16 bytes")
    assert "for the SavedModel export" in message and "\n" not in message
    assert os.listdir(tmp_path) == ["export"] and sorted(os.listdir(export)) == before


def test_serve_images_keeps_any_size_and_matches_the_network(loaded, saved_model):
    images = np.random.default_rng(0).integers(0, 256, [2, 37, 53, 3], dtype=np.uint8)
    served = saved_model.signatures["serve_images"](images=images)["probabilities"].numpy()
    assert served.shape == (2, 37, 53, 1) and 0 <= served.min() and served.max() <= 1

    network = loaded.keras_model
    at_size = images[:, :32, :32].repeat(2, axis=1).repeat(2, axis=2)  # 64 px: no resizing
    expected = network(tf.constant(at_size, tf.float32) / 255.0, training=False).numpy()
    served = saved_model.signatures["serve_images"](images=at_size)["probabilities"].numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_serving_default_runs_as_tensorflow_serving_runs_it(workdir):
    """Loaded as graph + variables by tag and signature name, as the model server does."""
    photo = np.random.default_rng(1).integers(0, 256, [30, 45, 3], dtype=np.uint8)
    encoded = [tf.io.encode_png(photo).numpy(), tf.io.encode_jpeg(photo).numpy()]
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.load(
            session, ["serve"], os.path.join(workdir, "export")
        )
        signature = meta_graph.signature_def[serving.DEFAULT_SIGNATURE]
        fetches = {name: info.name for name, info in signature.outputs.items()}
        outputs = session.run(fetches, {signature.inputs["image_bytes"].name: encoded})
    assert outputs["probabilities"].shape == (2, 30, 45, 1)
    assert outputs["height"].tolist() == [30, 30] and outputs["width"].tolist() == [45, 45]
    assert serving.IMAGES_SIGNATURE in meta_graph.signature_def


def test_serving_default_pads_a_batch_of_sizes_to_the_largest(saved_model):
    photos = [np.full([h, w, 3], 128, np.uint8) for h, w in ((20, 30), (40, 10))]
    encoded = tf.constant([tf.io.encode_png(photo).numpy() for photo in photos])
    outputs = saved_model.signatures["serving_default"](image_bytes=encoded)
    assert outputs["probabilities"].shape == (2, 40, 30, 1)
    assert outputs["height"].numpy().tolist() == [20, 40]
    assert outputs["width"].numpy().tolist() == [30, 10]
    assert np.all(outputs["probabilities"][0, 20:].numpy() == 0)  # padding
    assert np.all(outputs["probabilities"][1, :, 10:].numpy() == 0)


# ---------------------------------------------------------------- inference


def test_model_kind_tells_a_workdir_from_an_export(workdir, tmp_path):
    assert inference.model_kind(workdir) == "workdir"
    assert inference.model_kind(os.path.join(workdir, "export")) == "export"
    with pytest.raises(UserError, match="does not exist"):
        inference.model_kind(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="is neither a work directory"):
        inference.model_kind(str(tmp_path))


def test_a_workdir_loads_its_best_weights_in_float32(workdir, network):
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        trained = inference.load_trained_model(workdir)
        assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert (trained.kind, trained.image_size, trained.path) == ("workdir", SIZE_PX, workdir)
    assert trained.config["model"]["backbone"] == "resnet18"
    images = np.random.default_rng(2).integers(0, 256, [2, SIZE_PX, SIZE_PX, 3], dtype=np.uint8)
    expected = network(tf.constant(images, tf.float32) / 255.0, training=False).numpy()
    probabilities = trained.predict(tf.constant(images))
    assert probabilities.dtype == tf.float32
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=1e-6)


def test_an_export_predicts_as_its_workdir(workdir, loaded):
    images = np.random.default_rng(3).integers(0, 256, [2, SIZE_PX, SIZE_PX, 3], dtype=np.uint8)
    from_workdir = loaded.predict(tf.constant(images))
    exported = inference.load_trained_model(os.path.join(workdir, "export"))
    assert (exported.kind, exported.image_size, exported.keras_model) == ("export", SIZE_PX, None)
    from_export = exported.predict(tf.constant(images))
    np.testing.assert_allclose(from_export.numpy(), from_workdir.numpy(), atol=1e-5)


def test_a_workdir_without_best_weights_loads_the_latest_checkpoint(workdir, network, tmp_path):
    other = str(tmp_path / "workdir")
    workdir_lib.write_json(os.path.join(other, "config.json"), _config().to_dict())
    with pytest.raises(UserError, match="holds no trained weights"):
        inference.load_trained_model(other)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=network), os.path.join(other, "checkpoints"), max_to_keep=1
    )
    manager.save(checkpoint_number=3)
    loaded = inference.load_trained_model(other).keras_model
    for expected, restored in zip(network.weights, loaded.weights):
        np.testing.assert_array_equal(expected.numpy(), restored.numpy())


def test_an_export_without_metadata_asks_for_a_new_export(tmp_path):
    export = str(tmp_path / "export")
    serving.export_saved_model(_small_network(), export)
    os.remove(os.path.join(export, serving.METADATA_FILE))
    with pytest.raises(UserError, match="export it again with python -m trainer.export"):
        inference.load_trained_model(export)


def test_an_export_stores_its_threshold_and_masks_by_it(tmp_path):
    export = str(tmp_path / "export")
    serving.export_saved_model(_small_network(), export, threshold=0.52)
    saved_model = tf.saved_model.load(export)
    images = np.random.default_rng(0).integers(0, 256, [2, 12, 10, 3], dtype=np.uint8)

    outputs = saved_model.signatures["serve_images"](images=images)

    probabilities = outputs["probabilities"].numpy()
    assert 0 < np.mean(probabilities > 0.52) < 1, "the test needs pixels on both sides"
    np.testing.assert_array_equal(outputs["mask"].numpy(), (probabilities > 0.52).astype(np.uint8))
    encoded = tf.io.encode_png(tf.constant(images[0]))
    served = saved_model.signatures["serving_default"](image_bytes=tf.stack([encoded]))
    np.testing.assert_array_equal(
        served["mask"].numpy(), (served["probabilities"].numpy() > 0.52).astype(np.uint8)
    )
    assert inference.load_trained_model(export).threshold == 0.52
    assert workdir_lib.read_json(os.path.join(export, serving.METADATA_FILE))["threshold"] == 0.52


def test_a_padding_export_keeps_the_proportions_and_says_so(tmp_path):
    export = str(tmp_path / "export")
    network = _small_network()
    serving.export_saved_model(network, export, resize="pad")
    saved_model = tf.saved_model.load(export)
    images = np.random.default_rng(1).integers(0, 256, [1, 4, 8, 3], dtype=np.uint8)

    served = saved_model.signatures["serve_images"](images=images)["probabilities"].numpy()

    # 4 x 8 padded to 8 x 8 is the model's size: the network sees the photo unresized.
    square = np.zeros([1, 8, 8, 3], np.float32)
    square[:, :4] = images / 255.0
    np.testing.assert_allclose(served, network(square).numpy()[:, :4], atol=1e-5)
    assert inference.load_trained_model(export).resize == "pad"


def test_a_binary_export_keeps_its_two_signatures_and_their_outputs(saved_model):
    encoded = ["probabilities", "mask", "height", "width"]
    outputs = {name: sorted(f.structured_outputs) for name, f in saved_model.signatures.items()}
    assert outputs == {
        "serving_default": sorted(encoded),
        "serve_images": ["mask", "probabilities"],
    }


def test_a_model_is_not_exported_with_another_task():
    three = classes.Task(num_classes=3, names=CLASS_NAMES)
    with pytest.raises(ValueError, match="outputs 1 channel"):
        serving.make_signatures(_small_network(), task=three)


# ---------------------------------------------------------------- several classes


@pytest.fixture(scope="module")
def multiclass_network():
    """The tiny U-Net with three softmax classes."""
    return build_network(multiclass_config())


@pytest.fixture(scope="module")
def multiclass_workdir(tmp_path_factory, multiclass_network):
    folder = tmp_path_factory.mktemp("multiclass") / "workdir"
    return write_workdir(str(folder), multiclass_config(), multiclass_network)


@pytest.fixture(scope="module")
def multiclass_export(multiclass_workdir):
    return tf.saved_model.load(os.path.join(multiclass_workdir, "export"))


@pytest.mark.slow  # the multi-class export: ~25 s of setup
def test_a_multiclass_export_records_its_classes_and_signatures(multiclass_workdir):
    export = os.path.join(multiclass_workdir, "export")
    metadata = workdir_lib.read_json(os.path.join(export, serving.METADATA_FILE))
    assert metadata == {
        "image_size": SIZE_PX,
        "resize": "stretch",
        "signatures": ["serving_default", "serve_images", serving.LABELS_SIGNATURE],
        "num_classes": 3,
        "class_names": list(CLASS_NAMES),
        "ignore_label": 255,
    }  # no threshold: the argmax decides
    task = classes.task(multiclass_config())
    assert serving.task_of(metadata) == task
    assert inference.load_trained_model(export).task == task


@pytest.mark.slow  # the multi-class export: ~25 s of setup
def test_serve_images_gives_each_class_probability_and_the_argmax(
    multiclass_export, multiclass_network
):
    images = np.random.default_rng(0).integers(0, 256, [2, 37, 53, 3], dtype=np.uint8)
    outputs = multiclass_export.signatures["serve_images"](images=images)
    assert sorted(outputs) == ["labels", "probabilities"]
    probabilities, labels = outputs["probabilities"].numpy(), outputs["labels"].numpy()
    assert probabilities.shape == (2, 37, 53, 3) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)
    assert labels.shape == (2, 37, 53, 1) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels[..., 0], probabilities.argmax(axis=-1))

    at_size = images[:, :32, :32].repeat(2, axis=1).repeat(2, axis=2)  # 64 px: no resizing
    expected = multiclass_network(tf.constant(at_size, tf.float32) / 255.0, training=False)
    served = multiclass_export.signatures["serve_images"](images=at_size)["probabilities"]
    np.testing.assert_allclose(served.numpy(), expected.numpy(), atol=1e-5)


@pytest.mark.slow  # the multi-class export: ~25 s of setup
def test_serving_default_and_serve_labels_give_labels_at_each_photos_size(multiclass_export):
    rng = np.random.default_rng(1)
    photos = [rng.integers(0, 256, [h, w, 3], dtype=np.uint8) for h, w in ((21, 30), (40, 13))]
    encoded = tf.constant([tf.io.encode_png(photo).numpy() for photo in photos])
    served = multiclass_export.signatures["serving_default"](image_bytes=encoded)
    labelled = multiclass_export.signatures[serving.LABELS_SIGNATURE](image_bytes=encoded)

    assert served["probabilities"].shape == (2, 40, 30, 3)
    assert served["labels"].shape == (2, 40, 30, 1) and served["labels"].dtype == tf.uint8
    assert served["height"].numpy().tolist() == [21, 40]
    assert served["width"].numpy().tolist() == [30, 13]
    for i, (height, width) in enumerate(photo.shape[:2] for photo in photos):
        probabilities = served["probabilities"][i].numpy()
        labels = served["labels"][i, ..., 0].numpy()
        np.testing.assert_allclose(probabilities[:height, :width].sum(axis=-1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(
            labels[:height, :width], probabilities[:height, :width].argmax(axis=-1)
        )
        padding = np.ones(labels.shape, bool)
        padding[:height, :width] = False
        assert np.all(labels[padding] == 0) and np.all(probabilities[padding] == 0)
    assert sorted(labelled) == ["height", "labels", "width"]  # 1 byte a pixel, no probabilities
    for name in ("labels", "height", "width"):
        np.testing.assert_array_equal(labelled[name].numpy(), served[name].numpy())
