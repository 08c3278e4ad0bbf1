"""The TensorFlow side of the benchmarks, imported by child processes only.

The model, optimizer, step counter and train function come from the trainer's
one builder, `trainer.loop.build_trainee`, as in `trainer/train.py`, so that a
figure measured here is a figure of the trainer. In-memory batches are drawn
by the trainer's synthetic data generator, so that no benchmark of the train
step reads the disk. Timing and memory are `benchmarks.measure`'s.
"""

import time
from pathlib import Path

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import distribute, loop
from trainer.data import cache, layout, pipeline, synthetic
from trainer.plan import run_plan

import ml_collections
import numpy as np
import pandas as pd
import tensorflow as tf

from benchmarks import measure

# The learning-rate schedule needs a run length; speed does not depend on it.
_NOMINAL_STEPS_PER_EPOCH = 100


def build_trainee(
    config: ml_collections.ConfigDict, strategy: tf.distribute.Strategy
) -> loop.Trainee:
    """The trainer's `loop.build_trainee` under a nominal run plan.

    A benchmark has no data set size; the plan's step counts only shape the
    learning-rate schedule. The builder seeds Keras first, so that every
    variant of a benchmark starts from the same initial weights.
    """
    num_train = _NOMINAL_STEPS_PER_EPOCH * config.data.batch_size
    plan = run_plan(config, num_train, strategy.num_replicas_in_sync)
    return loop.build_trainee(config, strategy, plan)


def weights_checksum(model: tf.keras.Model) -> float:
    """Sum of |w| over all weights: equal in two processes means the same initial weights."""
    return float(sum(np.abs(w.numpy().astype(np.float64)).sum() for w in model.weights))


def run_call(trainee: loop.Trainee, iterator, num_steps: int) -> dict:
    """One call of the train function; reading its results waits for the device."""
    logs = trainee.train_fn(iterator, tf.constant(num_steps, tf.int32))
    return {
        "loss": float(logs["loss"]),
        "finite_steps": int(logs["finite_steps"]),
        "num_steps": num_steps,
    }


def time_training(
    trainee: loop.Trainee,
    iterator,
    config: ml_collections.ConfigDict,
    *,
    warmup_calls: int,
    timed_calls: int,
    steps_per_call: int | None = None,
) -> dict:
    """Times the train function after warm-up calls (the first one traces and compiles).

    Args:
        trainee: from `build_trainee`.
        iterator: a distributed iterator of `(images, masks)` batches.
        config: the config the trainee was built from.
        warmup_calls: calls before timing, the first (tracing) included.
        timed_calls: calls timed.
        steps_per_call: train steps per call; the config's
            `train.steps_per_execution` when None.

    Returns:
        `steps_per_sec`, `images_per_sec` (global), `first_call_s` (tracing,
        compilation and the first steps), `cores_busy`, the last call's `loss`,
        and `finite_steps` / `timed_steps` of the timed calls.
    """
    steps_per_call = steps_per_call or config.train.steps_per_execution
    calls = []

    def call():
        calls.append(run_call(trainee, iterator, steps_per_call))
        return steps_per_call

    first_started = time.perf_counter()
    call()
    first_call_s = time.perf_counter() - first_started
    timing = measure.time_calls(
        call, warmup_calls=max(0, warmup_calls - 1), timed_calls=timed_calls
    )
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


def train_in_memory_with_kernel_work(
    config: ml_collections.ConfigDict, *, num_batches: int, warmup_calls: int, timed_calls: int
) -> dict:
    """Trains the config's network on in-memory batches; `time_training`'s figures and more.

    For benchmarks that compare process-wide runtime settings (environment
    variables read when TensorFlow starts), each variant in its own process.

    Returns:
        `time_training`'s dict plus `kernel_s` (CPU seconds in the kernel) and
        `faults_per_step` (minor page faults), both over the warm-up and timed
        calls, and `onednn` (whether TensorFlow runs oneDNN's CPU kernels).
    """
    import resource

    from tensorflow.python.util import _pywrap_util_port

    trainee = build_trainee(config, one_device_strategy())
    iterator = in_memory_batches(trainee, config.data.image_size, num_batches=num_batches)
    before = resource.getrusage(resource.RUSAGE_SELF)
    timing = time_training(
        trainee, iterator, config, warmup_calls=warmup_calls, timed_calls=timed_calls
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    steps = max(int(trainee.step.numpy()), 1)
    return {
        **timing,
        "kernel_s": after.ru_stime - before.ru_stime,
        "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "onednn": bool(_pywrap_util_port.IsMklEnabled()),
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


def in_memory_batches(trainee: loop.Trainee, size_px: int, *, num_batches: int = 1):
    """A distributed iterator cycling over in-memory batches: no input cost per step.

    `num_batches` global batches of `rendered_examples` at `size_px` are cut
    into slices of the per-replica batch size, which every replica reads in
    turn. A single slice is `tf.data.Dataset.from_tensors(slice).repeat()`.
    """
    strategy = trainee.strategy
    per_replica = trainee.global_batch_size // strategy.num_replicas_in_sync
    num_slices = num_batches * strategy.num_replicas_in_sync
    images, masks = rendered_examples(num_slices * per_replica, size_px)
    images = images.reshape(num_slices, per_replica, *images.shape[1:])
    masks = masks.reshape(num_slices, per_replica, *masks.shape[1:])

    def dataset_fn(_):
        if num_slices == 1:
            return tf.data.Dataset.from_tensors((images[0], masks[0])).repeat()
        return tf.data.Dataset.from_tensor_slices((images, masks)).repeat()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def data_frame(root) -> pd.DataFrame:
    """All image/mask pairs of a `runner.synthetic_data` folder, paired by the trainer."""
    parts = sorted(Path(root).glob("part*"))
    frames = [layout.scan(part).pairs[["images", "masks", "group"]] for part in parts]
    return pd.concat(frames, ignore_index=True)


def cache_pairs(
    frame: pd.DataFrame, data_config: ml_collections.ConfigDict, folder: str
) -> pd.DataFrame:
    """Decodes and resizes every pair once into `folder`, as trainer/train.py does.

    Returns:
        The frame with the cache's column, which makes
        `pipeline.make_dataset` read the cached pairs instead of decoding.
    """
    num_parallel_calls, _ = pipeline.pipeline_parallelism(data_config, 1)
    return cache.ensure_cached(
        frame, data_config.image_size, folder, num_parallel_calls=num_parallel_calls
    )


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
