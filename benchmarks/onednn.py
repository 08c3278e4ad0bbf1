"""TensorFlow's CPU kernels with and without oneDNN, training the config's network.

    python -m benchmarks.onednn                          # configs/demo_cpu.py
    python -m benchmarks.onednn --config=configs/small_data_cpu.py
    python -m benchmarks.onednn --quick                  # proves it runs; no figures

TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512
VNNI, AVX512-BF16 or AMX; on others (AVX2 only, e.g. an AMD EPYC Zen 3) it
runs its Eigen kernels unless TF_ENABLE_ONEDNN_OPTS=1, which `import trainer`
sets (`trainer/__init__.py`). This trains the same network on the same
in-memory batches in two processes, one with TF_ENABLE_ONEDNN_OPTS=0 and one
with it 1, and reports images/s, whether oneDNN was on in each (a CPU where
TensorFlow turns it on anyway shows the same kernels twice), and the final
loss, which must agree within 1 % (other kernels sum in another order).

TensorFlow is imported in the children only.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from absl import flags

from benchmarks import measure, report, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
runner.define_timing_flags(warmup_calls=1, calls=4)
flags.DEFINE_integer("num_batches", 4, "Distinct in-memory batches, used in turn.")
FLAGS = flags.FLAGS

_SETTINGS = {"off": "0", "on": "1"}
_QUICK = {"num_batches": 2, "warmup_calls": 1, "calls": 1}
_CHILD_FLAGS = ("num_batches", "warmup_calls", "calls")
_LOSS_TOLERANCE = 0.01


def run_child(variant: str) -> dict:
    """Trains the config's network with this process's kernels; times it."""
    from benchmarks import harness

    return harness.train_in_memory_with_kernel_work(
        measure.config_from_json(FLAGS.config_json),
        num_batches=FLAGS.num_batches,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=FLAGS.calls,
    )


def run_parent() -> int:
    """Trains with oneDNN off and on, each in its own process; prints the speed-up of on."""
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config),
        "onednn": list(_SETTINGS),
        **{name: FLAGS[name].value for name in _CHILD_FLAGS},
    }
    record = report.start("onednn", "TensorFlow's CPU kernels without vs with oneDNN", settings)
    args = {"config_json": config, **{name: FLAGS[name].value for name in _CHILD_FLAGS}}
    rows = [
        runner.run_child("onednn", name, args, env={"TF_ENABLE_ONEDNN_OPTS": value})
        for name, value in _SETTINGS.items()
    ]
    off, on = rows
    for row in rows:
        row["speedup"] = report.ratio(row.get("images_per_sec"), off.get("images_per_sec"))
    losses = [row.get("loss") for row in rows]
    same_loss = None not in losses and abs(losses[1] - losses[0]) <= _LOSS_TOLERANCE * abs(
        losses[0]
    )
    columns = [
        report.Column("variant", "TF_ENABLE_ONEDNN_OPTS"),
        report.Column("onednn", "oneDNN kernels"),
        report.Column("images_per_sec", "images/s", ".2f"),
        report.Column("speedup", "vs off", ".2f"),
        report.Column("kernel_s", "kernel s", ".1f"),
        report.Column("loss", "final loss", ".4f"),
        report.PEAK_RSS_MIB,
    ]
    notes = ["final losses within 1 %" if same_loss else "final losses DIFFER: something is broken"]
    if off.get("onednn") and on.get("onednn"):
        notes.append("TensorFlow runs oneDNN on this CPU either way: the same kernels twice")
    return report.finish(
        record, rows, columns, ratios={"oneDNN on / off images/s": on.get("speedup")}, notes=notes
    )


if __name__ == "__main__":
    cli.run(runner.main(run_parent, run_child, quick=_QUICK))
