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
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
runner.define_timing_flags(warmup_calls=2, calls=10)
flags.DEFINE_integer("gpus", -1, "GPUs to scale to: -1 all there are (CPU if none), 0 the CPU.")
flags.DEFINE_integer("cpu_devices", 2, "Logical CPU devices to scale to when on the CPU.")
flags.DEFINE_enum("scaling", "weak", ["weak", "strong"], "weak: batch per replica fixed.")
FLAGS = flags.FLAGS

_QUICK = {"warmup_calls": 1, "calls": 2}


def run_child(variant: str) -> dict:
    """Trains on the devices the variant names ('2 CPU': 2 CPU devices); returns the timing."""
    from trainer import distribute

    import tensorflow as tf

    from benchmarks import harness

    count, device_type = variant.split()
    num_devices = int(count)
    gpus = tf.config.list_physical_devices("GPU")
    if device_type == "CPU":
        tf.config.set_visible_devices([], "GPU")
        distribute.configure_cpu_devices(num_devices)
    else:
        tf.config.set_visible_devices(gpus[:num_devices], "GPU")
    names = [d.name for d in tf.config.list_logical_devices(device_type)][:num_devices]
    strategy = tf.distribute.MirroredStrategy(names)
    config = measure.config_from_json(FLAGS.config_json)
    trainee = harness.build_trainee(config, strategy)
    iterator = harness.in_memory_batches(trainee, config.data.image_size)
    timing = harness.time_training(
        trainee, iterator, config, warmup_calls=FLAGS.warmup_calls, timed_calls=FLAGS.calls
    )
    return {
        **timing,
        "replicas": strategy.num_replicas_in_sync,
        "global_batch_size": trainee.global_batch_size,
        "per_replica_batch_size": trainee.global_batch_size // num_devices,
    }


def device_counts() -> tuple[str, list[int]]:
    """The device type and the counts to run: 1, then powers of two up to N, and N."""
    num_gpus = FLAGS.gpus
    if num_gpus < 0:
        num_gpus = len(runner.probe_gpus())
    device_type, most = ("GPU", num_gpus) if num_gpus > 0 else ("CPU", FLAGS.cpu_devices)
    counts = [1]
    while counts[-1] * 2 < most:
        counts.append(counts[-1] * 2)
    if most > 1:
        counts.append(most)
    return device_type, counts


def run_parent() -> int:
    """Runs each device count in its own process; reports speed-up and efficiency."""
    device_type, counts = device_counts()
    base_config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(base_config, varied=("global_batch_size",)),
        "config_batch_size": base_config.data.batch_size,
        "device_type": device_type,
        "device_counts": counts,
        "scaling": FLAGS.scaling,
        "warmup_calls": FLAGS.warmup_calls,
        "calls": FLAGS.calls,
    }
    title = f"mirrored train step on 1 vs {counts[-1]} {device_type} devices"
    record = report.start("replicas", title, settings)
    rows = []
    for count in counts:
        config = base_config.copy_and_resolve_references()
        if FLAGS.scaling == "weak":
            config.data.batch_size = base_config.data.batch_size * count
        args = {"config_json": config, "warmup_calls": FLAGS.warmup_calls, "calls": FLAGS.calls}
        rows.append({**runner.run_child("replicas", f"{count} {device_type}", args), "n": count})
    base = rows[0].get("images_per_sec")
    for row in rows:
        speedup = report.ratio(row.get("images_per_sec"), base)
        row["speedup"] = speedup
        row["efficiency"] = None if speedup is None else speedup / row["n"]
    columns = [
        report.Column("variant", "devices"),
        report.Column("global_batch_size", "global batch"),
        report.IMAGES_PER_SEC,
        report.Column("speedup", "speed-up", ".2f"),
        report.Column("efficiency", "efficiency", ".2f"),
        report.CORES_BUSY,
        report.FIRST_CALL_S,
        report.PEAK_RSS_MIB,
    ]
    ratios = {f"scaling efficiency, {row['variant']}": row["efficiency"] for row in rows[1:]}
    notes = [
        "efficiency = (images/s on N / images/s on 1) / N; batch norm is synchronised on N > 1"
    ]
    if device_type == "CPU":
        notes.append("logical CPU devices share the host's cores: no speed-up is possible here")
    return report.finish(record, rows, columns, ratios=ratios, notes=notes)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
