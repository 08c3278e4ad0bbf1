"""float32 vs mixed_float16 vs mixed_bfloat16, each without and with XLA (jit_compile).

    python -m benchmarks.precision                       # configs/demo_cpu.py on this machine
    python -m benchmarks.precision --config=configs/nail_unet_effb4.py   # on a GPU machine
    python -m benchmarks.precision --quick               # proves it runs; no figures

Every variant runs in its own process (the mixed-precision policy is global),
builds the model, optimizer and train function with the trainer's functions
from the same seed (the table's `init` checksum shows the initial weights are
equal) and trains the same number of steps on the same in-memory batches
(synthetic nail photos drawn at the model's size). It reports images/s over
the timed calls, the time of the first call (tracing, and compiling under
XLA), and the last call's mean loss, which shows that nothing broke: it should
stay near float32's. Steps whose gradients are not finite are skipped by the
trainer (float16 loss scaling starts high), and counted.

TensorFlow is imported in the children only.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from absl import app, flags
from ml_collections import config_flags

from benchmarks import common

common.define_common_flags()
config_flags.DEFINE_config_file("config", "configs/demo_cpu.py", "Config file (configs/NAME.py).")
flags.DEFINE_list(
    "precisions", ["float32", "mixed_float16", "mixed_bfloat16"], "Precisions to compare."
)
flags.DEFINE_list("jit", ["false", "true"], "jit_compile settings to compare.")
flags.DEFINE_integer("num_batches", 4, "Distinct in-memory batches, used in turn.")
flags.DEFINE_integer("warmup_calls", 1, "Train-function calls before timing, the first included.")
flags.DEFINE_integer("calls", 4, "Timed train-function calls of steps_per_execution steps.")
FLAGS = flags.FLAGS

# Relative distance of a variant's final loss from float32's still called unbroken.
_LOSS_TOLERANCE = 0.10
_QUICK = {"num_batches": 2, "warmup_calls": 1, "calls": 1}


def run_child() -> dict:
    """Trains the variant the config describes; returns timing, losses and the init checksum."""
    from benchmarks import harness

    config = common.config_from_json(FLAGS.config_json)
    strategy = harness.one_device_strategy()
    trainee = harness.build_trainee(config, strategy)
    init_checksum = harness.weights_checksum(trainee.model)
    size = config.data.image_size
    images, masks = harness.rendered_examples(FLAGS.num_batches * config.data.batch_size, size)
    iterator = harness.in_memory_iterator(strategy, images, masks, config.data.batch_size)
    timing = harness.time_training(
        trainee,
        iterator,
        steps_per_call=config.train.steps_per_execution,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=FLAGS.calls,
    )
    return {
        **timing,
        "init_checksum": init_checksum,
        "total_steps": int(trainee.step.numpy()),
        **harness.devices(),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.child:
        common.write_child_result(FLAGS.child_result, run_child())
        return 0
    common.use_quick_settings(FLAGS, _QUICK)
    base_config = common.config_from_json(common.config_for_child(FLAGS.config, quick=FLAGS.quick))
    jit_values = [value.lower() in ("true", "1", "yes") for value in FLAGS.jit]
    settings = {
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "image_size": base_config.data.image_size,
        "global_batch_size": base_config.data.batch_size,
        "backbone": base_config.model.backbone,
        "steps_per_execution": base_config.train.steps_per_execution,
        "precisions": FLAGS.precisions,
        "jit": jit_values,
        **{name: FLAGS[name].value for name in ("num_batches", "warmup_calls", "calls")},
    }
    title = "float32 vs mixed_float16 vs mixed_bfloat16, without and with XLA"
    record = common.start("precision", title, settings, FLAGS)
    rows = []
    for precision in FLAGS.precisions:
        for jit in jit_values:
            config = common.config_from_json(base_config.to_json())
            config.train.precision = precision
            config.train.jit_compile = jit
            args = {
                "config_json": config.to_json(),
                **{name: FLAGS[name].value for name in ("num_batches", "warmup_calls", "calls")},
            }
            variant = f"{precision}{' +XLA' if jit else ''}"
            rows.append(common.run_child("precision", variant, args))
    goals, notes = _judge(rows)
    columns = [
        common.Column("variant", "precision"),
        common.Column("images_per_sec", "images/s", ".2f"),
        common.Column("speedup", "vs float32", ".2f"),
        common.FIRST_CALL_S,
        common.Column("loss", "final loss", ".4f"),
        common.Column("finite_steps", "applied", "d"),
        common.Column("timed_steps", "timed steps", "d"),
        common.Column("init_checksum", "init", ".6g"),
        common.PEAK_RSS_MIB,
    ]
    return common.finish(record, rows, columns, goals=goals, notes=notes)


def _judge(rows: list[dict]):
    reference = rows[0]
    for row in rows:
        row["speedup"] = common.ratio(row.get("images_per_sec"), reference.get("images_per_sec"))
    goals, notes = [], []
    for row in rows[1:]:
        name = f"|final loss - {reference['variant']}'s| / it, {row['variant']}"
        distance = _loss_distance(row, reference)
        goals.append(common.goal(name, distance, _LOSS_TOLERANCE, at_most=True))
    checksums = {row.get("init_checksum") for row in rows if "error" not in row}
    notes.append(
        "same initial weights in every variant"
        if len(checksums) == 1
        else f"initial weights DIFFER between variants: {sorted(checksums)}"
    )
    notes.append(f"speed-ups and loss distances are relative to {reference['variant']}")
    return goals, notes


def _loss_distance(row: dict, reference: dict) -> float | None:
    if row.get("loss") is None or not reference.get("loss"):
        return None
    return abs(row["loss"] - reference["loss"]) / reference["loss"]


if __name__ == "__main__":
    app.run(main)
