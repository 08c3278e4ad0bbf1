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
them on, TensorFlow uses oneDNN's own allocator in both. The mechanism is
`benchmarks/environment.py`'s.

TensorFlow is imported in the children only.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from benchmarks import environment, runner

runner.define_common_flags()
runner.define_config_flag("configs/small_data_cpu.py")
runner.define_timing_flags(warmup_calls=1, calls=4)

# oneDNN's kernels bring their own allocator, whatever TF_CPU_ALLOCATOR_USE_BFC says.
_VARIANTS = {
    "default": {"TF_CPU_ALLOCATOR_USE_BFC": "false", "TF_ENABLE_ONEDNN_OPTS": "0"},
    "bfc": {"TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_ENABLE_ONEDNN_OPTS": "0"},
}


def run_parent() -> int:
    """Trains under each allocator in its own process and prints the speed-up of BFC."""
    title = "TensorFlow's default CPU allocator vs BFC"
    # Equal up to the order of floating-point sums.
    return environment.compare("allocator", title, _VARIANTS, loss_tolerance=1e-3)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, environment.run_child, quick=environment.QUICK))
