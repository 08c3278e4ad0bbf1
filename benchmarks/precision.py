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
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
runner.define_timing_flags(warmup_calls=1, calls=4)
flags.DEFINE_list(
    "precisions", ["float32", "mixed_float16", "mixed_bfloat16"], "Precisions to compare."
)
flags.DEFINE_list("jit", ["false", "true"], "jit_compile settings to compare.")
flags.DEFINE_integer("num_batches", 4, "Distinct in-memory batches, used in turn.")
FLAGS = flags.FLAGS

# Relative distance of a variant's final loss from float32's still called unbroken.
_LOSS_TOLERANCE = 0.10
# Two variants prove the script runs; XLA has its own test (tests/test_model.py).
_QUICK = {
    "num_batches": 2,
    "warmup_calls": 1,
    "calls": 1,
    "precisions": ["float32", "mixed_bfloat16"],
    "jit": ["false"],
}
_CHILD_FLAGS = ("num_batches", "warmup_calls", "calls")


def run_child(variant: str) -> dict:
    """Trains the variant the config describes; returns timing, losses and the init checksum."""
    from benchmarks import harness

    config = measure.config_from_json(FLAGS.config_json)
    trainee = harness.build_trainee(config, harness.one_device_strategy())
    init_checksum = harness.weights_checksum(trainee.model)
    size = config.data.image_size
    iterator = harness.in_memory_batches(trainee, size, num_batches=FLAGS.num_batches)
    timing = harness.time_training(
        trainee, iterator, config, warmup_calls=FLAGS.warmup_calls, timed_calls=FLAGS.calls
    )
    return {**timing, "init_checksum": init_checksum, "total_steps": int(trainee.step.numpy())}


def run_parent() -> int:
    """Runs every precision with and without XLA, each in its own process; judges the losses."""
    base_config = runner.config_for_child(FLAGS.config)
    jit_values = [value.lower() in ("true", "1", "yes") for value in FLAGS.jit]
    settings = {
        **runner.config_settings(base_config, varied=("precision",)),
        "precisions": FLAGS.precisions,
        "jit": jit_values,
        **{name: FLAGS[name].value for name in _CHILD_FLAGS},
    }
    title = "float32 vs mixed_float16 vs mixed_bfloat16, without and with XLA"
    record = report.start("precision", title, settings)
    rows = []
    for precision in FLAGS.precisions:
        for jit in jit_values:
            config = base_config.copy_and_resolve_references()
            config.train.precision = precision
            config.train.jit_compile = jit
            args = {"config_json": config, **{name: FLAGS[name].value for name in _CHILD_FLAGS}}
            variant = f"{precision}{' +XLA' if jit else ''}"
            rows.append(runner.run_child("precision", variant, args))
    goals, ratios, notes = _judge(rows)
    columns = [
        report.Column("variant", "precision"),
        report.Column("images_per_sec", "images/s", ".2f"),
        report.Column("speedup", "vs float32", ".2f"),
        report.FIRST_CALL_S,
        report.Column("loss", "final loss", ".4f"),
        report.Column("finite_steps", "applied", "d"),
        report.Column("timed_steps", "timed steps", "d"),
        report.Column("init_checksum", "init", ".6g"),
        report.PEAK_RSS_MIB,
    ]
    return report.finish(record, rows, columns, goals=goals, ratios=ratios, notes=notes)


def _judge(rows: list[dict]):
    reference = rows[0]
    for row in rows:
        row["speedup"] = report.ratio(row.get("images_per_sec"), reference.get("images_per_sec"))
    ratios = {
        f"{row['variant']} / {reference['variant']} images/s": row["speedup"] for row in rows[1:]
    }
    goals, notes = [], []
    for row in rows[1:]:
        name = f"|final loss - {reference['variant']}'s| / it, {row['variant']}"
        distance = _loss_distance(row, reference)
        goals.append(report.goal(name, distance, _LOSS_TOLERANCE, at_most=True))
    checksums = {row.get("init_checksum") for row in rows if "error" not in row}
    notes.append(
        "same initial weights in every variant"
        if len(checksums) == 1
        else f"initial weights DIFFER between variants: {sorted(checksums)}"
    )
    notes.append(f"speed-ups and loss distances are relative to {reference['variant']}")
    return goals, ratios, notes


def _loss_distance(row: dict, reference: dict) -> float | None:
    if row.get("loss") is None or not reference.get("loss"):
        return None
    return abs(row["loss"] - reference["loss"]) / reference["loss"]


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
