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
from trainer import cli

from absl import app, flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
flags.DEFINE_list("values", ["1", "8", "32"], "steps_per_execution values to compare.")
flags.DEFINE_integer("steps_per_round", 32, "Steps per value and round; a multiple of each value.")
flags.DEFINE_integer("rounds", 2, "Rounds over all values.")
FLAGS = flags.FLAGS

# Two values and few steps: each value traces its own function, which is most of a quick run.
_QUICK = {"rounds": 1, "values": ["1", "4"], "steps_per_round": 4}
_CHILD_FLAGS = ("values", "steps_per_round", "rounds")


def run_child(variant: str) -> dict:
    """Runs every value in rounds in one process (the variant is 'all'); returns images/s."""
    from benchmarks import harness

    config = measure.config_from_json(FLAGS.config_json)
    values = [int(value) for value in FLAGS.values]
    trainee = harness.build_trainee(config, harness.one_device_strategy())
    iterator = harness.in_memory_batches(trainee, config.data.image_size)
    first_call_s = {}
    for value in values:  # the first call traces; each value once before timing
        started = time.perf_counter()
        harness.run_call(trainee, iterator, value)
        first_call_s[value] = time.perf_counter() - started
    seconds = dict.fromkeys(values, 0.0)
    for _ in range(FLAGS.rounds):
        for value in values:
            timing = measure.time_calls(
                lambda v=value: harness.run_call(trainee, iterator, v)["num_steps"],
                warmup_calls=0,
                timed_calls=FLAGS.steps_per_round // value,
            )
            seconds[value] += timing["seconds"]
    steps = FLAGS.rounds * FLAGS.steps_per_round
    batch = trainee.global_batch_size
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
    }


def run_parent() -> int:
    """Runs the one child that compares every value; reports images/s against the first."""
    values = [int(value) for value in FLAGS.values]
    uneven = [value for value in values if FLAGS.steps_per_round % value]
    if uneven:
        raise app.UsageError(
            f"--steps_per_round={FLAGS.steps_per_round} is not a multiple of {uneven}; "
            f"use a multiple of {max(values)}"
        )
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config, varied=("steps_per_execution",)),
        "values": values,
        "steps_per_round": FLAGS.steps_per_round,
        "rounds": FLAGS.rounds,
    }
    title = f"steps per execution {' vs '.join(str(v) for v in values)}"
    record = report.start("steps_per_execution", title, settings)
    args = {"config_json": config, **{n: FLAGS[n].value for n in _CHILD_FLAGS}}
    result = runner.run_child("steps_per_execution", "all", args)
    if "error" in result:
        rows = [result]
    else:
        rows = [{"variant": str(row["steps_per_execution"]), **row} for row in result["per_value"]]
        for row in rows:
            row["peak_rss_mib"] = result["peak_rss_mib"]
            row["speedup"] = report.ratio(row["images_per_sec"], rows[0]["images_per_sec"])
    columns = [
        report.Column("variant", "steps/call"),
        report.Column("steps_per_sec", "steps/s", ".3f"),
        report.IMAGES_PER_SEC,
        report.Column("speedup", f"vs {values[0]}", ".3f"),
        report.FIRST_CALL_S,
        report.Column("timed_steps", "timed steps", "d"),
    ]
    ratios = {
        f"images/s, {row['variant']} / {values[0]} steps per call": row.get("speedup")
        for row in rows[1:]
    }
    notes = ["all values run in one process, interleaved round by round, on one traced function"]
    return report.finish(record, rows, columns, ratios=ratios, notes=notes)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
