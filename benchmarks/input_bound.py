"""Is training input-bound? Train steps/s fed by the real pipeline vs by in-memory tensors.

    python -m benchmarks.input_bound                     # configs/demo_cpu.py
    python -m benchmarks.input_bound --config=configs/nail_unet_effb4.py --photo_px=768
    python -m benchmarks.input_bound --quick             # proves it runs; no figures

Both variants build the same model, optimizer and train function with the
trainer's own functions, from the same seed, and run the same number of steps
of `steps_per_execution` each (the config's):

  pipeline  batches from `trainer.data.pipeline.make_dataset(..., training=True)`
            over synthetic photos on disk (benchmarks/.data/), distributed with
            `distribute_datasets_from_function` as trainer/train.py does, with
            the config's `data.cache` (disk in the configs: built into a fresh
            folder before timing, as a first run would).
  uncached  the same with `data.cache = "none"`: every photo decoded each time.
  memory    the first batch of that same pipeline, then
            `tf.data.Dataset.from_tensors(batch).repeat()`: no input cost at all.

Goal: pipeline / memory >= 0.9. On a CPU-only machine the pipeline's threads
and the model's share the same cores, so the gap there is mostly contention.
Encoder weights are never downloaded (`encoder_weights` is set to none).

Each variant runs in its own process; TensorFlow is imported in the child only.
"""

import os

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
runner.define_timing_flags(warmup_calls=2, calls=20)
flags.DEFINE_integer("num_images", 400, "Synthetic photos on disk (trainer.synthetic's default).")
flags.DEFINE_integer("photo_px", 256, "Side of the photos on disk (trainer.synthetic's default).")
flags.DEFINE_integer("rounds", 2, "Runs of each variant, interleaved; the table shows medians.")
FLAGS = flags.FLAGS

_QUICK = {"num_images": 16, "photo_px": 96, "warmup_calls": 1, "calls": 2, "rounds": 1}
VARIANTS = ("pipeline", "uncached", "memory")


def run_child(variant: str) -> dict:
    """Trains on one input and returns the timing."""
    from trainer.data import cache as data_cache
    from trainer.data import pipeline

    import tensorflow as tf

    from benchmarks import harness

    config = measure.config_from_json(FLAGS.config_json)
    strategy = harness.one_device_strategy()
    trainee = harness.build_trainee(config, strategy)
    frame = harness.data_frame(FLAGS.data)
    if variant != "pipeline":
        config.data.cache = "none"  # memory: one batch needs no cache
    cache_dir = data_cache.cache_dir(config.data, FLAGS.scratch)
    if cache_dir is not None:
        frame = harness.cache_pairs(frame, config.data, cache_dir)

    def pipeline_fn(input_context):
        return pipeline.make_dataset(
            frame, config.data, input_context, training=True, seed=config.train.seed
        )

    if variant in ("pipeline", "uncached"):
        dataset_fn = pipeline_fn
    else:
        first = next(iter(pipeline_fn(tf.distribute.InputContext())))

        def dataset_fn(_):
            return tf.data.Dataset.from_tensors(first).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    timing = harness.time_training(
        trainee, iterator, config, warmup_calls=FLAGS.warmup_calls, timed_calls=FLAGS.calls
    )
    return {**timing, "cache": config.data.cache}


def run_parent() -> int:
    """Runs the three inputs in interleaved rounds; judges pipeline / memory."""
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config),
        **{
            name: FLAGS[name].value
            for name in ("num_images", "photo_px", "warmup_calls", "calls", "rounds")
        },
    }
    title = "train steps/s: real pipeline vs in-memory tensors"
    # One results file per config: the seed config's run must not replace the demo's.
    config_name = os.path.splitext(os.path.basename(settings["config"]))[0]
    name = "input_bound" if config_name == "demo_cpu" else f"input_bound_{config_name}"
    record = report.start(name, title, settings)
    root = runner.synthetic_data(FLAGS.num_images, FLAGS.photo_px)
    args = {
        "config_json": config,
        "data": root,
        "warmup_calls": FLAGS.warmup_calls,
        "calls": FLAGS.calls,
    }
    rows = runner.run_rounds(
        "input_bound", VARIANTS, args, rounds=FLAGS.rounds, key="steps_per_sec", scratch=True
    )
    for row in rows:  # the median steps/s, in images
        if row.get("steps_per_sec") is not None:
            row["images_per_sec"] = row["steps_per_sec"] * config.data.batch_size
    by_variant = {row["variant"]: row for row in rows}
    memory_rate = by_variant["memory"].get("steps_per_sec")
    fraction = report.ratio(by_variant["pipeline"].get("steps_per_sec"), memory_rate)
    goals = [report.goal(f"pipeline (cache {config.data.cache})/memory steps/s", fraction, 0.9)]
    uncached = report.ratio(by_variant["uncached"].get("steps_per_sec"), memory_rate)
    notes = [] if uncached is None else [f"uncached pipeline/memory steps/s: {uncached:.3f}"]
    columns = [
        report.Column("variant", "input"),
        report.Column("cache", "data.cache"),
        report.Column("steps_per_sec", "steps/s (median)", ".3f"),
        report.Column("steps_per_sec_runs", "steps/s of each run", ".3f"),
        report.IMAGES_PER_SEC,
        report.CORES_BUSY,
        report.FIRST_CALL_S,
        report.Column("loss", "last loss", ".4f"),
        report.PEAK_RSS_MIB,
    ]
    return report.finish(record, rows, columns, goals=goals, notes=notes)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
