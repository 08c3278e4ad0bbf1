"""Builds the segmentation network from the config's `model` group.

segmentation_models provides the architectures and backbones; this module
loads encoder weights (ImageNet download or a local file), makes the last
activation float32 (mixed precision) and, for more than one replica, rebuilds
batch norm as synchronised batch norm. The config's choices are checked
before, by `trainer.config_check`, from the names defined here.
"""

import re

from trainer.errors import UserError

import ml_collections
import segmentation_models as sm
import tensorflow as tf
from absl import logging

ARCHITECTURES = {"unet": sm.Unet, "fpn": sm.FPN, "linknet": sm.Linknet, "pspnet": sm.PSPNet}
BACKBONES = tuple(sm.Backbones.models_names())
# Input side must be a multiple of this: five /2 stages, PSPNet pools to 6x6 at /8.
SIZE_MULTIPLE = {"unet": 32, "fpn": 32, "linknet": 32, "pspnet": 48}
# Keras' get_file says so when a download fails: "URL fetch failure on URL: code -- reason".
_FETCH_FAILURE = re.compile(r"URL fetch failure on (\S+): ")


def encoder_weights_kind(encoder_weights) -> str:
    """What `model.encoder_weights` asks for: 'none', 'imagenet' or 'file' (a local path)."""
    if encoder_weights is None or str(encoder_weights).lower() in ("", "none"):
        return "none"
    if str(encoder_weights).lower() == "imagenet":
        return "imagenet"
    return "file"


def build_model(
    model_config: ml_collections.ConfigDict, *, image_size: int, num_replicas: int = 1
) -> tf.keras.Model:
    """Builds the network; call it inside `strategy.scope()`.

    The config is expected to have passed `trainer.config_check.validate`.

    Args:
        model_config: the config's `model` group.
        image_size: side of the square input, px.
        num_replicas: replicas in sync; batch norm is synchronised across them
            when `model.sync_batchnorm` is on (None: on when more than one).

    Returns:
        A Keras model from float images `[batch, s, s, 3]` in 0..1 to float32
        probabilities `[batch, s, s, C]`: C = 1 sigmoid channel when
        `model.num_classes` is 1 (binary), else C = K softmax channels.

    Raises:
        UserError: the ImageNet weights cannot be downloaded (no internet), or the
            local weights file does not fit the backbone.
    """
    arch = model_config.arch.lower()
    weights_kind = encoder_weights_kind(model_config.encoder_weights)
    # Configs saved before multi-class (a work directory's config.json) are binary.
    num_classes = int(model_config.get("num_classes", 1))
    activation = "sigmoid" if num_classes == 1 else "softmax"
    kwargs = dict(
        input_shape=(image_size, image_size, 3),
        classes=num_classes,
        activation=activation,
        encoder_weights="imagenet" if weights_kind == "imagenet" else None,
        encoder_freeze=model_config.encoder_freeze,
    )
    if arch == "unet":
        kwargs["decoder_filters"] = tuple(model_config.decoder_filters)
    try:
        model = ARCHITECTURES[arch](model_config.backbone, **kwargs)
    except Exception as error:
        failure = _FETCH_FAILURE.search(str(error))
        if weights_kind != "imagenet" or failure is None:
            raise
        raise UserError(_offline_message(failure.group(1))) from None
    if weights_kind == "file":
        _load_encoder_file(model, model_config.encoder_weights)

    # Under mixed precision the network computes in float16/bfloat16; the loss
    # needs float32 probabilities (the seed's trick: re-add the activation as float32).
    probabilities = tf.keras.layers.Activation(activation, dtype="float32", name="probabilities")(
        model.layers[-2].output
    )
    model = tf.keras.Model(model.input, probabilities, name=f"{arch}_{model_config.backbone}")

    sync = model_config.sync_batchnorm
    if sync is None:
        sync = num_replicas > 1
    momentum = model_config.get("batchnorm_momentum", 0.0)
    return rebuild_layers(model, sync_batchnorm=sync, batchnorm_momentum=momentum)


def _offline_message(url: str) -> str:
    """The one line for an ImageNet download that failed (a machine without internet)."""
    file_name = url.rsplit("/", 1)[-1]
    return (
        f"--config.model.encoder_weights='imagenet': cannot download {file_name} from {url} "
        "(no internet?); download it on a machine with internet and pass "
        f"--config.model.encoder_weights=PATH to that copy (or put it in ~/.keras/models/, "
        "where Keras looks first), or pass --config.model.encoder_weights=none to train "
        "from scratch"
    )


def _load_encoder_file(model: tf.keras.Model, path: str) -> None:
    """Loads a local encoder weights file (Keras .h5) into the layers of the same name."""
    stored = _h5_layer_names(path)
    if not stored & {layer.name for layer in model.layers if layer.weights}:
        raise UserError(
            f"--config.model.encoder_weights={path!r} holds no layer of this model; give the "
            "notop ImageNet .h5 file of the same backbone"
        )
    try:
        model.load_weights(path, by_name=True, skip_mismatch=False)
    except (OSError, ValueError) as error:
        raise UserError(
            f"--config.model.encoder_weights={path!r} does not fit this backbone "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); give the notop "
            "ImageNet .h5 file of the same backbone"
        ) from None
    logging.info("Loaded encoder weights from %s", path)


def _h5_layer_names(path: str) -> set[str]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            return {n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]}
    except (OSError, KeyError) as error:
        raise UserError(
            f"--config.model.encoder_weights={path!r} is not a Keras .h5 weights file "
            f"({type(error).__name__}); give the notop ImageNet .h5 file of the backbone"
        ) from None


@tf.keras.utils.register_keras_serializable(package="trainer")
class RepeatUpsampling2D(tf.keras.layers.Layer):
    """Nearest-neighbour upsampling by an integer factor, written with tf.repeat.

    Same output as `UpSampling2D(interpolation='nearest')`, whose gradient op
    (ResizeNearestNeighborGrad) has no XLA kernel outside TPUs, so a U-Net
    built with it cannot train with `jit_compile=True`; tf.repeat's gradient can.
    """

    def __init__(self, size=(2, 2), **kwargs):
        super().__init__(**kwargs)
        self.size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def call(self, inputs):
        rows = tf.repeat(inputs, self.size[0], axis=1)
        return tf.repeat(rows, self.size[1], axis=2)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = tf.TensorShape(input_shape).as_list()
        scale = lambda n, k: None if n is None else n * k
        return tf.TensorShape(
            [batch, scale(height, self.size[0]), scale(width, self.size[1]), channels]
        )

    def get_config(self):
        return {**super().get_config(), "size": self.size}


def rebuild_layers(
    model: tf.keras.Model, *, sync_batchnorm: bool, batchnorm_momentum: float = 0.0
) -> tf.keras.Model:
    """Clones `model`, keeping its weights, with layers fit for distributed XLA training.

    Nearest-neighbour UpSampling2D becomes `RepeatUpsampling2D` (XLA-compilable
    gradient). With `sync_batchnorm`, every BatchNormalization is synchronised
    across replicas: per-replica batch statistics make a step on N replicas
    differ from the same step on one, and small per-replica batches hurt accuracy.
    With a `batchnorm_momentum` above 0 (`model.batchnorm_momentum`), every
    BatchNormalization's moving statistics use it instead of the backbone's own
    (Keras's MobileNetV2 and EfficientNets use 0.999, which after a short run
    from scratch leaves the statistics that validation uses half-way from their
    initial values).
    """

    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, tf.keras.layers.UpSampling2D) and layer.interpolation == "nearest":
            return RepeatUpsampling2D(size=layer.size, name=layer.name, dtype=layer.dtype_policy)
        if sync_batchnorm and isinstance(layer, tf.keras.layers.BatchNormalization):
            config["synchronized"] = True
            config.pop("fused", None)  # fused kernels cannot synchronise
        if batchnorm_momentum and isinstance(layer, tf.keras.layers.BatchNormalization):
            config["momentum"] = batchnorm_momentum
        return layer.__class__.from_config(config)

    clone = tf.keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def count_parameters(model: tf.keras.Model) -> int:
    """Number of weights (trainable and not) in the model."""
    return int(sum(tf.keras.backend.count_params(w) for w in model.weights))
