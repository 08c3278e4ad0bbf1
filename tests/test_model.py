"""Model building: architectures, float32 output, weights files, bad choices."""

import trainer  # noqa: F401
from trainer import model as model_lib
from trainer.errors import UserError

import numpy as np
import pytest
import tensorflow as tf

from configs import demo_cpu


def _model_config(**overrides):
    config = demo_cpu.get_config().model
    for key, value in overrides.items():
        config[key] = value
    return config


@pytest.fixture(scope="module")
def unet():
    return model_lib.build_model(_model_config(), image_size=64)


def test_unet_maps_images_to_float32_probabilities(unet):
    probabilities = unet(np.random.rand(2, 64, 64, 3).astype("float32"))
    assert probabilities.shape == (2, 64, 64, 1) and probabilities.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(probabilities)) <= float(tf.reduce_max(probabilities)) <= 1.0


def test_last_activation_is_float32_under_mixed_precision():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = model_lib.build_model(_model_config(backbone="mobilenetv2"), image_size=64)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert model.layers[-2].compute_dtype == "float16"
    assert model.output.dtype == tf.float32


@pytest.mark.parametrize("arch, size", [("fpn", 64), ("linknet", 64), ("pspnet", 96)])
def test_other_architectures_build(arch, size):
    model = model_lib.build_model(_model_config(arch=arch, backbone="mobilenetv2"), image_size=size)
    assert model.output_shape == (None, size, size, 1)


def test_synchronized_batchnorm_clone_keeps_weights_and_outputs(unet):
    clone = model_lib.rebuild_layers(unet, sync_batchnorm=True)
    batchnorms = [
        layer for layer in clone.layers if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]
    assert batchnorms and all(layer.synchronized for layer in batchnorms)
    images = np.random.rand(2, 64, 64, 3).astype("float32")
    np.testing.assert_allclose(unet(images), clone(images), atol=1e-5)


def _batchnorm_momenta(model):
    batchnorm = tf.keras.layers.BatchNormalization
    return {layer.momentum for layer in model.layers if isinstance(layer, batchnorm)}


def test_batchnorm_momentum_replaces_the_backbones_own(unet):
    assert _batchnorm_momenta(unet) == {0.99}  # ResNet-18's own, kept by default
    # Keras's MobileNetV2 has 0.999 in its own batch norms.
    model = model_lib.build_model(
        _model_config(backbone="mobilenetv2", batchnorm_momentum=0.9), image_size=32
    )
    assert _batchnorm_momenta(model) == {0.9}


def test_sync_batchnorm_defaults_to_on_with_several_replicas():
    model = model_lib.build_model(
        _model_config(backbone="mobilenetv2"), image_size=64, num_replicas=2
    )
    assert any(getattr(layer, "synchronized", False) for layer in model.layers)


def test_local_encoder_weights_file_is_loaded(unet, tmp_path):
    path = str(tmp_path / "encoder.h5")
    unet.save_weights(path)
    model = model_lib.build_model(_model_config(encoder_weights=path), image_size=64)
    np.testing.assert_array_equal(
        model.get_layer("conv0").get_weights()[0], unet.get_layer("conv0").get_weights()[0]
    )


def test_weights_file_of_another_backbone_is_a_user_error(tmp_path):
    other = model_lib.build_model(_model_config(backbone="mobilenetv2"), image_size=64)
    path = str(tmp_path / "other.h5")
    other.save_weights(path)
    with pytest.raises(UserError, match="does not fit"):
        model_lib.build_model(_model_config(encoder_weights=path), image_size=64)


def test_file_that_is_not_h5_weights_is_a_user_error(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("not hdf5")
    with pytest.raises(UserError, match="not a Keras .h5"):
        model_lib.build_model(_model_config(encoder_weights=str(path)), image_size=64)


def test_imagenet_weights_offline_is_one_line_naming_the_file_and_the_fix(monkeypatch):
    url = (
        "https://github.com/Callidior/keras-applications/releases/download/efficientnet/"
        "efficientnet-b0_weights_tf_dim_ordering_tf_kernels_autoaugment_notop.h5"
    )

    def offline_get_file(fname, origin, **kwargs):
        # Keras' get_file words a failed download so.
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] name resolution")

    monkeypatch.setattr(tf.keras.utils, "get_file", offline_get_file)
    config = _model_config(backbone="efficientnetb0", encoder_weights="imagenet")
    with pytest.raises(UserError) as error:
        model_lib.build_model(config, image_size=64)
    message = str(error.value)
    assert "\n" not in message
    for words in (url, "encoder_weights=PATH", "encoder_weights=none", "~/.keras/models/"):
        assert words in message


def test_repeat_upsampling_equals_nearest_upsampling():
    features = tf.random.uniform([2, 5, 7, 3])
    expected = tf.keras.layers.UpSampling2D(size=2)(features)
    np.testing.assert_array_equal(model_lib.RepeatUpsampling2D(size=2)(features), expected)


@pytest.mark.slow  # 8 s: compiling the U-Net with XLA
def test_unet_trains_under_xla(unet):
    # UpSampling2D's gradient has no XLA kernel off TPU; the rebuilt layers do.
    assert not any(isinstance(layer, tf.keras.layers.UpSampling2D) for layer in unet.layers)

    @tf.function(jit_compile=True)
    def gradient_norm(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(unet(images, training=True))
        return tf.linalg.global_norm(tape.gradient(loss, unet.trainable_variables))

    assert np.isfinite(float(gradient_norm(tf.random.uniform([2, 64, 64, 3]))))
