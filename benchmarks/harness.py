"""The TensorFlow side of the benchmarks, imported by child processes only.

The model, optimizer, step counter and train function are the trainer's own
(`loop.build_training`, `loop.make_train_fn`), built by the same calls as
`trainer/train.py`, so
that a figure measured here is a figure of the trainer. In-memory batches are
drawn by the trainer's synthetic data generator, so that no benchmark of the
train step reads the disk.
"""

import dataclasses
import time
from pathlib import Path

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import distribute, loop
from trainer.data import layout, synthetic
from trainer.plan import run_plan

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf

from benchmarks import common

# The learning-rate schedule needs a run length; speed does not depend on it.
_NOMINAL_STEPS_PER_EPOCH = 100


@dataclasses.dataclass
class Trainee:
    """The trainer's model, optimizer and train function, ready to run."""

    model: tf.keras.Model
    optimizer: tf.keras.optimizers.Optimizer
    step: tf.Variable
    train_fn: object
    strategy: tf.distribute.Strategy
    global_batch_size: int


def build_trainee(config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy) -> Trainee:
    """Builds what `trainer/train.py` builds, from the config and the strategy.

    The random seed is set first, so that every variant of a benchmark starts
    from the same initial weights.
    """
    num_replicas = strategy.num_replicas_in_sync
    plan = run_plan(config, _NOMINAL_STEPS_PER_EPOCH * config.data.batch_size, num_replicas)
    model, optimizer, step = loop.build_training(config, strategy, total_steps=plan["total_steps"])
    train_fn = loop.make_train_fn(
        model,
        optimizer,
        step,
        strategy,
        global_batch_size=plan["global_batch_size"],
        jit_compile=config.train.jit_compile,
    )
    return Trainee(model, optimizer, step, train_fn, strategy, plan["global_batch_size"])


def weights_checksum(model: tf.keras.Model) -> float:
    """Sum of |w| over all weights: equal in two processes means the same initial weights."""
    return float(sum(np.abs(w.numpy().astype(np.float64)).sum() for w in model.weights))


def run_call(trainee: Trainee, iterator, num_steps: int) -> dict:
    """One call of the train function; reading its results waits for the device."""
    logs = trainee.train_fn(iterator, tf.constant(num_steps, tf.int32))
    return {
        "loss": float(logs["loss"]),
        "finite_steps": int(logs["finite_steps"]),
        "num_steps": num_steps,
    }


def time_training(
    trainee: Trainee, iterator, *, steps_per_call: int, warmup_calls: int, timed_calls: int
) -> dict:
    """Times the train function after warm-up calls (the first one traces and compiles).

    Returns:
        `steps_per_sec`, `images_per_sec` (global), `first_call_s` (tracing,
        compilation and the first steps), `cores_busy`, the last call's `loss`,
        and `finite_steps` / `timed_steps` of the timed calls.
    """
    calls = []

    def call():
        calls.append(run_call(trainee, iterator, steps_per_call))
        return steps_per_call

    first_started = time.perf_counter()
    call()
    first_call_s = time.perf_counter() - first_started
    timing = common.time_calls(call, warmup_calls=max(0, warmup_calls - 1), timed_calls=timed_calls)
    timed = calls[len(calls) - timed_calls :]
    return {
        "steps_per_sec": timing["items_per_sec"],
        "images_per_sec": timing["items_per_sec"] * trainee.global_batch_size,
        "seconds": timing["seconds"],
        "first_call_s": first_call_s,
        "cores_busy": timing["cores_busy"],
        "loss": calls[-1]["loss"],
        "first_loss": calls[0]["loss"],
        "timed_steps": sum(c["num_steps"] for c in timed),
        "finite_steps": sum(c["finite_steps"] for c in timed),
    }


def rendered_examples(num_examples: int, size_px: int, *, seed: int = 0):
    """Synthetic nail photos drawn at the model's size, in memory, groups in turn.

    Returns:
        images float32 `[n, s, s, 3]` in 0..1, masks float32 `[n, s, s, 1]` in {0, 1}.
    """
    images, masks = [], []
    for index in range(num_examples):
        rng = np.random.default_rng([seed, index])
        image, mask = synthetic.render_example(rng, synthetic.GROUPS[index % 4], size_px)
        images.append(image)
        masks.append(mask)
    images = np.stack(images).astype(np.float32) / 255.0
    masks = (np.stack(masks)[..., None] > 127).astype(np.float32)
    return images, masks


def in_memory_iterator(strategy: tf.distribute.Strategy, images, masks, per_replica: int):
    """A distributed iterator cycling over in-memory batches of `per_replica` examples.

    One batch is `tf.data.Dataset.from_tensors(batch).repeat()`, which costs
    nothing per step; several are sliced in turn, each replica getting its own.
    """
    num_batches = len(images) // per_replica

    def as_batches(array):
        kept = array[: num_batches * per_replica]
        return kept.reshape(num_batches, per_replica, *array.shape[1:])

    images, masks = as_batches(images), as_batches(masks)

    def dataset_fn(_):
        if num_batches == 1:
            return tf.data.Dataset.from_tensors((images[0], masks[0])).repeat()
        return tf.data.Dataset.from_tensor_slices((images, masks)).repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def data_frame(root) -> pd.DataFrame:
    """All image/mask pairs of a `common.synthetic_data` folder, paired by the trainer."""
    parts = sorted(Path(root).glob("part*"))
    frames = [layout.scan(part).pairs[["images", "masks", "group"]] for part in parts]
    return pd.concat(frames, ignore_index=True)


def one_device_strategy() -> tf.distribute.Strategy:
    """The first GPU if there is one, else the CPU (the trainer's `one_device`)."""
    return distribute.make_strategy("one_device")


def devices() -> dict:
    """TensorFlow's version and the devices it sees."""
    return {
        "tf_version": tf.__version__,
        "gpus": gpu_names(),
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
    }


def gpu_names() -> list[str]:
    """Names of the GPUs TensorFlow sees, e.g. 'NVIDIA H100 80GB HBM3'."""
    return [
        tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
        for gpu in tf.config.list_physical_devices("GPU")
    ]


def forward_flops(model: tf.keras.Model, size_px: int) -> int:
    """Floating-point operations of one image's forward pass, counted by the TF profiler.

    The profiler sums the FLOP statistics TensorFlow registers per op (a
    multiply-add counts 2) over the graph of a concrete function at batch 1.
    """
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(tf.TensorSpec([1, size_px, size_px, 3], tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(
        graph=concrete.graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options
    )
    return int(profile.total_float_ops)


def gpu_memory_peak_bytes() -> int | None:
    """Peak bytes TensorFlow's allocator has held on GPU:0 in this process; None without a GPU."""
    if not tf.config.list_logical_devices("GPU"):
        return None
    return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
