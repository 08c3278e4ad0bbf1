"""Scaling of the train step over replicas: global images/s on 1 device vs N (mirrored).

    python -m benchmarks.replicas                        # CPU: 1 vs 2 logical CPU devices
    python -m benchmarks.replicas --config=configs/nail_unet_effb4.py --gpus=8   # 1, 2, 4, 8 GPUs
    python -m benchmarks.replicas --quick                # proves it runs; no figures

Each device count runs in its own process, which splits the CPU into logical
devices (`trainer.distribute.configure_cpu_devices`) or hides GPUs beyond the
count before TensorFlow runs, then trains with `tf.distribute.MirroredStrategy`
over those devices (what `--strategy=mirrored` builds; with one device too).
The model is built as the trainer builds it, so batch norm is synchronised
when there is more than one replica. Data are in-memory tensors, so that only
the step is measured.

Scaling efficiency = (images/s on N / images/s on 1) / N. With `--scaling=weak`
(the default) every replica gets the config's batch size, so the global batch
grows with N; `--scaling=strong` keeps the config's global batch. Logical CPU
devices share the same cores: on CPU this measures what mirrored costs, not a
speed-up.

TensorFlow is imported in the children only.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from absl import app, flags
from ml_collections import config_flags

from benchmarks import common

common.define_common_flags()
config_flags.DEFINE_config_file("config", "configs/demo_cpu.py", "Config file (configs/NAME.py).")
flags.DEFINE_integer("gpus", -1, "GPUs to scale to: -1 all there are (CPU if none), 0 the CPU.")
flags.DEFINE_integer("cpu_devices", 2, "Logical CPU devices to scale to when on the CPU.")
flags.DEFINE_enum("scaling", "weak", ["weak", "strong"], "weak: batch per replica fixed.")
flags.DEFINE_integer("warmup_calls", 2, "Train-function calls before timing, the first included.")
flags.DEFINE_integer("calls", 10, "Timed train-function calls of steps_per_execution steps.")
flags.DEFINE_integer("devices", 1, "Internal: the device count of a child.")
flags.DEFINE_enum("device_type", "CPU", ["CPU", "GPU"], "Internal: the device type of a child.")
FLAGS = flags.FLAGS

_QUICK = {"warmup_calls": 1, "calls": 2}


def run_child(num_devices: int, device_type: str) -> dict:
    """Trains on `num_devices` devices of `device_type`; returns the timing."""
    from trainer import distribute

    import tensorflow as tf

    from benchmarks import harness

    gpus = tf.config.list_physical_devices("GPU")
    if device_type == "CPU":
        tf.config.set_visible_devices([], "GPU")
        distribute.configure_cpu_devices(num_devices)
    else:
        tf.config.set_visible_devices(gpus[:num_devices], "GPU")
    names = [d.name for d in tf.config.list_logical_devices(device_type)][:num_devices]
    strategy = tf.distribute.MirroredStrategy(names)
    config = common.config_from_json(FLAGS.config_json)
    trainee = harness.build_trainee(config, strategy)
    per_replica = trainee.global_batch_size // num_devices
    images, masks = harness.rendered_examples(trainee.global_batch_size, config.data.image_size)
    iterator = harness.in_memory_iterator(strategy, images, masks, per_replica)
    timing = harness.time_training(
        trainee,
        iterator,
        steps_per_call=config.train.steps_per_execution,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=FLAGS.calls,
    )
    return {
        **timing,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": trainee.global_batch_size,
        "per_replica_batch_size": per_replica,
        **harness.devices(),
    }


def device_counts() -> tuple[str, list[int]]:
    """The device type and the counts to run: 1, then powers of two up to N, and N."""
    num_gpus = FLAGS.gpus
    if num_gpus < 0:
        num_gpus = len(common.probe_gpus())
    device_type, most = ("GPU", num_gpus) if num_gpus > 0 else ("CPU", FLAGS.cpu_devices)
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    if most > 1:
        counts.append(most)
    return device_type, counts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.child:
        result = run_child(FLAGS.devices, FLAGS.device_type)
        common.write_child_result(FLAGS.child_result, result)
        return 0
    common.use_quick_settings(FLAGS, _QUICK)
    device_type, counts = device_counts()
    base_config = common.config_from_json(common.config_for_child(FLAGS.config, quick=FLAGS.quick))
    settings = {
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "device_type": device_type,
        "device_counts": counts,
        "scaling": FLAGS.scaling,
        "config_batch_size": base_config.data.batch_size,
        "image_size": base_config.data.image_size,
        "backbone": base_config.model.backbone,
        "precision": base_config.train.precision,
        "steps_per_execution": base_config.train.steps_per_execution,
        "warmup_calls": FLAGS.warmup_calls,
        "calls": FLAGS.calls,
    }
    title = f"mirrored train step on 1 vs {counts[-1]} {device_type} devices"
    record = common.start("replicas", title, settings, FLAGS)
    rows = []
    for count in counts:
        config = common.config_from_json(base_config.to_json())
        if FLAGS.scaling == "weak":
            config.data.batch_size = base_config.data.batch_size * count
        args = {
            "config_json": config.to_json(),
            "devices": count,
            "device_type": device_type,
            "warmup_calls": FLAGS.warmup_calls,
            "calls": FLAGS.calls,
        }
        rows.append({**common.run_child("replicas", f"{count} {device_type}", args), "n": count})
    base = rows[0].get("images_per_sec")
    for row in rows:
        speedup = common.ratio(row.get("images_per_sec"), base)
        row["speedup"] = speedup
        row["efficiency"] = None if speedup is None else speedup / row["n"]
    columns = [
        common.Column("variant", "devices"),
        common.Column("global_batch_size", "global batch"),
        common.Column("images_per_sec", "images/s", ".1f"),
        common.Column("speedup", "speed-up", ".2f"),
        common.Column("efficiency", "efficiency", ".2f"),
        common.CORES_BUSY,
        common.FIRST_CALL_S,
        common.PEAK_RSS_MIB,
    ]
    notes = [
        "efficiency = (images/s on N / images/s on 1) / N; batch norm is synchronised on N > 1"
    ]
    if device_type == "CPU":
        notes.append("logical CPU devices share the host's cores: no speed-up is possible here")
    return common.finish(record, rows, columns, notes=notes)


if __name__ == "__main__":
    app.run(main)
