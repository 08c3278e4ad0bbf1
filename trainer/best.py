"""The weights of the best validation IoU: WORKDIR/best/.

  best/weights-STEP.*   the weights (`model.save_weights`, TensorFlow format)
  best/best.json        the record naming them: step, weights, the validation figures

best.json is replaced last and atomically, so it always names complete
weights: a run killed while saving keeps the previous best, whose files are
removed only once the new record is in place.
"""

import os

from trainer import workdir as workdir_lib

import tensorflow as tf


def save_best_weights(workdir: str, model: tf.keras.Model, *, step: int, results: dict) -> None:
    """Saves the model's weights as the best so far, replacing the previous best.

    Args:
        workdir: the work directory (or a non-chief worker's temporary one).
        model: the network.
        step: the training step of the weights.
        results: the validation figures (name -> number) to record with them.

    Raises:
        UserError: the disk is full or the folder cannot be written.
    """
    best_dir = os.path.join(workdir, workdir_lib.BEST_DIR)
    name = f"weights-{step}"
    with workdir_lib.writing(
        best_dir,
        what="the best weights",
        needed_bytes=lambda: workdir_lib.variables_bytes(model.weights),
    ):
        model.save_weights(os.path.join(best_dir, name))
    previous = read_best(workdir)
    workdir_lib.write_json(
        os.path.join(best_dir, workdir_lib.BEST_RECORD_FILE),
        {"step": step, "weights": name, **_plain(results)},
    )
    if previous and previous["weights"] != name:
        for file_name in tf.io.gfile.listdir(best_dir):
            if file_name.startswith(previous["weights"] + "."):
                tf.io.gfile.remove(os.path.join(best_dir, file_name))


def read_best(workdir: str) -> dict | None:
    """The best.json record of a work directory, or None when it has none."""
    path = os.path.join(workdir, workdir_lib.BEST_DIR, workdir_lib.BEST_RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    return workdir_lib.read_json(path)


def load_best_weights(workdir: str, model: tf.keras.Model) -> dict | None:
    """Loads the best weights into `model`; returns their record, or None if there are none."""
    record = read_best(workdir)
    if record is None:
        return None
    weights = os.path.join(workdir, workdir_lib.BEST_DIR, record["weights"])
    model.load_weights(weights).expect_partial()
    return record


def _plain(results: dict) -> dict:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in results.items()}
