"""Train steps per tf.function call (`train.steps_per_execution`): 1 vs 8 vs 32.

    python -m benchmarks.steps_per_execution             # configs/demo_cpu.py
    python -m benchmarks.steps_per_execution --config=configs/nail_unet_effb4.py  # on a GPU
    python -m benchmarks.steps_per_execution --quick     # proves it runs; no figures

The trainer's train function takes the number of steps as a tensor, so one
traced function serves every value: a single process builds the model once
(with the trainer's functions) and runs, round after round, the same number of
steps with each value in turn, so that drift of the machine spreads over all
values alike. Data are in-memory tensors, so that only the per-call overhead
changes between values.

TensorFlow is imported in the child only.
"""

import time

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)

from absl import app, flags
from ml_collections import config_flags

from benchmarks import common

common.define_common_flags()
config_flags.DEFINE_config_file("config", "configs/demo_cpu.py", "Config file (configs/NAME.py).")
flags.DEFINE_list("values", ["1", "8", "32"], "steps_per_execution values to compare.")
flags.DEFINE_integer("steps_per_round", 32, "Steps per value and round; a multiple of each value.")
flags.DEFINE_integer("rounds", 2, "Rounds over all values.")
FLAGS = flags.FLAGS

_QUICK = {"rounds": 1}
_CHILD_FLAGS = ("values", "steps_per_round", "rounds")


def run_child() -> dict:
    """Runs every value in rounds in one process; returns images/s per value."""
    from benchmarks import harness

    config = common.config_from_json(FLAGS.config_json)
    values = [int(value) for value in FLAGS.values]
    strategy = harness.one_device_strategy()
    trainee = harness.build_trainee(config, strategy)
    batch = config.data.batch_size
    images, masks = harness.rendered_examples(batch, config.data.image_size)
    iterator = harness.in_memory_iterator(strategy, images, masks, batch)
    first_call_s = {}
    for value in values:  # the first call traces; each value once before timing
        started = time.perf_counter()
        harness.run_call(trainee, iterator, value)
        first_call_s[value] = time.perf_counter() - started
    seconds = dict.fromkeys(values, 0.0)
    for _ in range(FLAGS.rounds):
        for value in values:
            calls = FLAGS.steps_per_round // value
            timing = common.time_calls(
                lambda v=value: harness.run_call(trainee, iterator, v)["num_steps"],
                warmup_calls=0,
                timed_calls=calls,
            )
            seconds[value] += timing["seconds"]
    steps = FLAGS.rounds * FLAGS.steps_per_round
    return {
        "per_value": [
            {
                "steps_per_execution": value,
                "steps_per_sec": steps / seconds[value],
                "images_per_sec": steps * batch / seconds[value],
                "first_call_s": first_call_s[value],
                "timed_steps": steps,
            }
            for value in values
        ],
        **harness.devices(),
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.child:
        common.write_child_result(FLAGS.child_result, run_child())
        return 0
    common.use_quick_settings(FLAGS, _QUICK)
    values = [int(value) for value in FLAGS.values]
    uneven = [value for value in values if FLAGS.steps_per_round % value]
    if uneven:
        raise app.UsageError(
            f"--steps_per_round={FLAGS.steps_per_round} is not a multiple of {uneven}; "
            f"use a multiple of {max(values)}"
        )
    config_json = common.config_for_child(FLAGS.config, quick=FLAGS.quick)
    config = common.config_from_json(config_json)
    settings = {
        "config": config_flags.get_config_filename(FLAGS["config"]),
        "image_size": config.data.image_size,
        "global_batch_size": config.data.batch_size,
        "backbone": config.model.backbone,
        "precision": config.train.precision,
        "values": values,
        "steps_per_round": FLAGS.steps_per_round,
        "rounds": FLAGS.rounds,
    }
    title = f"steps per execution {' vs '.join(str(v) for v in values)}"
    record = common.start("steps_per_execution", title, settings, FLAGS)
    args = {"config_json": config_json, **{n: FLAGS[n].value for n in _CHILD_FLAGS}}
    result = common.run_child("steps_per_execution", "all", args)
    if "error" in result:
        rows = [result]
    else:
        rows = [{"variant": str(row["steps_per_execution"]), **row} for row in result["per_value"]]
        for row in rows:
            row["peak_rss_mib"] = result["peak_rss_mib"]
            row["speedup"] = common.ratio(row["images_per_sec"], rows[0]["images_per_sec"])
    columns = [
        common.Column("variant", "steps/call"),
        common.Column("steps_per_sec", "steps/s", ".3f"),
        common.Column("images_per_sec", "images/s", ".1f"),
        common.Column("speedup", f"vs {values[0]}", ".3f"),
        common.FIRST_CALL_S,
        common.Column("timed_steps", "timed steps", "d"),
    ]
    notes = ["all values run in one process, interleaved round by round, on one traced function"]
    return common.finish(record, rows, columns, notes=notes)


if __name__ == "__main__":
    app.run(main)
