"""Benchmarks of settings TensorFlow reads from the environment when it starts.

Such a setting holds for a whole process, so each variant is a child process
with its own environment variables; every child trains the config's network
on the same in-memory batches from the same initial weights
(`harness.train_in_memory_with_kernel_work`). `benchmarks/allocator.py` and
`benchmarks/onednn.py` are the scripts: each defines its flags, then passes
its variants to `compare` and `run_child` to `runner.main`.
"""

from absl import flags

from benchmarks import measure, report, runner

flags.DEFINE_integer("num_batches", 4, "Distinct in-memory batches, used in turn.")
FLAGS = flags.FLAGS

QUICK = {"num_batches": 2, "warmup_calls": 1, "calls": 1}
_CHILD_FLAGS = ("num_batches", "warmup_calls", "calls")


def run_child(variant: str) -> dict:
    """Trains the config's network in this process's environment; times it and its kernel work."""
    from benchmarks import harness

    return harness.train_in_memory_with_kernel_work(
        measure.config_from_json(FLAGS.config_json),
        num_batches=FLAGS.num_batches,
        warmup_calls=FLAGS.warmup_calls,
        timed_calls=FLAGS.calls,
    )


def compare(
    script: str, title: str, variants: dict[str, dict[str, str]], *, loss_tolerance: float
) -> int:
    """Runs each variant's child with its environment; prints images/s against the first.

    Args:
        script: the benchmark's module name under `benchmarks/`; names its results too.
        title: what it compares, one line.
        variants: `{name: {environment variable: value}}`, the baseline first.
        loss_tolerance: the relative distance of a final loss from the
            baseline's still called the same (other kernels sum in another order).

    Returns:
        The exit status of `report.finish`.
    """
    config = runner.config_for_child(FLAGS.config)
    settings = {
        **runner.config_settings(config),
        "variants": variants,
        **{name: FLAGS[name].value for name in _CHILD_FLAGS},
    }
    record = report.start(script, title, settings)
    args = {"config_json": config, **{name: FLAGS[name].value for name in _CHILD_FLAGS}}
    rows = [runner.run_child(script, name, args, env=env) for name, env in variants.items()]
    baseline = rows[0]
    for row in rows:
        row["speedup"] = report.ratio(row.get("images_per_sec"), baseline.get("images_per_sec"))
    losses = [row.get("loss") for row in rows]
    same_loss = None not in losses and all(
        abs(loss - losses[0]) <= loss_tolerance * abs(losses[0]) for loss in losses
    )
    columns = [
        report.Column("variant", "variant"),
        report.Column("onednn", "oneDNN kernels"),
        report.Column("images_per_sec", "images/s", ".2f"),
        report.Column("speedup", f"vs {baseline['variant']}", ".2f"),
        report.Column("kernel_s", "kernel s", ".1f"),
        report.Column("faults_per_step", "page faults/step", ".0f"),
        report.Column("loss", "final loss", ".4f"),
        report.PEAK_RSS_MIB,
    ]
    agree = f"final losses within {loss_tolerance:.1%} of {baseline['variant']}'s"
    notes = [agree if same_loss else "final losses DIFFER: something is broken"]
    asked = {env.get("TF_ENABLE_ONEDNN_OPTS") for env in variants.values()}
    if len(asked) > 1 and len({row.get("onednn") for row in rows}) == 1:
        notes.append("TF_ENABLE_ONEDNN_OPTS changed nothing on this CPU: the same kernels in each")
    ratios = {
        f"{row['variant']} / {baseline['variant']} images/s": row.get("speedup") for row in rows[1:]
    }
    return report.finish(record, rows, columns, ratios=ratios, notes=notes)
