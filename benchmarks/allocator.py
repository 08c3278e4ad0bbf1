"""TensorFlow's default CPU allocator against its BFC allocator, training the config's network.

    python -m benchmarks.allocator --config=configs/small_data_cpu.py
    python -m benchmarks.allocator --quick               # proves it runs; no figures

`import trainer` selects TensorFlow's BFC allocator for CPU tensors
(`trainer/__init__.py`). This trains the same network on the same in-memory
batches in two processes, one with TF_CPU_ALLOCATOR_USE_BFC=false
(TensorFlow's default allocator, which returns each large tensor to the
operating system when it is freed) and one with it true, and reports
images/s, the seconds spent in the kernel and the page faults per timed step
(what a fresh mapping of every step's activations costs), and the final loss,
which must agree: the allocator changes where tensors live, not the arithmetic.
Both children run with oneDNN's kernels off (`TF_ENABLE_ONEDNN_OPTS=0`): with
them on, TensorFlow uses oneDNN's own allocator in both.

TensorFlow is imported in the children only.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/small_data_cpu.py")
runner.define_timing_flags(warmup_calls=1, calls=4)
flags.DEFINE_integer("num_batches", 4, "Distinct in-memory batches, used in turn.")
FLAGS = flags.FLAGS

_ALLOCATORS = {"default": "false", "bfc": "true"}
_QUICK = {"num_batches": 2, "warmup_calls": 1, "calls": 1}
_CHILD_FLAGS = ("num_batches", "warmup_calls", "calls")


def run_child(variant: str) -> dict:
    """Trains the config's network under this process's allocator; times it and its kernel work."""
    from benchmarks import harness

    return harness.train_in_memory_with_kernel_work(
        measure.config_from_json(FLAGS.config_json),
        num_batches=FLAGS.num_batches,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=FLAGS.calls,
    )


def run_parent() -> int:
    """Trains under each allocator in its own process and prints the speed-up of BFC."""
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config),
        "allocators": list(_ALLOCATORS),
        **{name: FLAGS[name].value for name in _CHILD_FLAGS},
    }
    record = report.start("allocator", "TensorFlow's default CPU allocator vs BFC", settings)
    args = {"config_json": config, **{name: FLAGS[name].value for name in _CHILD_FLAGS}}
    # oneDNN's kernels bring their own allocator, whatever TF_CPU_ALLOCATOR_USE_BFC says.
    rows = [
        runner.run_child(
            "allocator",
            name,
            args,
            env={"TF_CPU_ALLOCATOR_USE_BFC": value, "TF_ENABLE_ONEDNN_OPTS": "0"},
        )
        for name, value in _ALLOCATORS.items()
    ]
    default, bfc = rows
    for row in rows:
        row["speedup"] = report.ratio(row.get("images_per_sec"), default.get("images_per_sec"))
    # Equal up to the order of floating-point sums (oneDNN may pick other kernels).
    same_loss = bool(default.get("loss")) and bfc.get("loss") is not None
    same_loss = same_loss and abs(bfc["loss"] - default["loss"]) <= 1e-3 * abs(default["loss"])
    columns = [
        report.Column("variant", "allocator"),
        report.Column("images_per_sec", "images/s", ".2f"),
        report.Column("speedup", "vs default", ".2f"),
        report.Column("kernel_s", "kernel s", ".1f"),
        report.Column("faults_per_step", "page faults/step", ".0f"),
        report.Column("loss", "final loss", ".4f"),
        report.PEAK_RSS_MIB,
    ]
    notes = ["same final loss" if same_loss else "final losses DIFFER: something is broken"]
    return report.finish(
        record, rows, columns, ratios={"bfc / default images/s": bfc["speedup"]}, notes=notes
    )


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
