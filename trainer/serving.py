"""SavedModel export of a trained network, for TensorFlow Serving and trainer.predict."""

import os
import shutil

import tensorflow as tf


def export_saved_model(model: tf.keras.Model, directory: str) -> str:
    """Writes `model` as a SavedModel at `directory`, replacing what was there.

    The model is written next to `directory` first and renamed into place, so
    a crash while exporting leaves the previous export intact.

    Returns:
        `directory`.
    """
    temporary = directory.rstrip("/") + ".tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    image_size = model.input_shape[1]

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def serve(images):
        return {"probabilities": tf.cast(model(images, training=False), tf.float32)}

    tf.saved_model.save(model, temporary, signatures={"serving_default": serve})
    previous = directory.rstrip("/") + ".old"
    if os.path.exists(directory):
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(directory, previous)
    os.replace(temporary, directory)
    shutil.rmtree(previous, ignore_errors=True)
    return directory
