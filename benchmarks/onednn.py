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

TensorFlow is imported in the children only. The mechanism is
`benchmarks/environment.py`'s.
"""

import trainer  # noqa: F401  (selects Keras 2 before TensorFlow loads)
from trainer import cli

from benchmarks import environment, runner

runner.define_common_flags()
runner.define_config_flag("configs/demo_cpu.py")
runner.define_timing_flags(warmup_calls=1, calls=4)

_VARIANTS = {"off": {"TF_ENABLE_ONEDNN_OPTS": "0"}, "on": {"TF_ENABLE_ONEDNN_OPTS": "1"}}


def run_parent() -> int:
    """Trains with oneDNN off and on, each in its own process; prints the speed-up of on."""
    title = "TensorFlow's CPU kernels without vs with oneDNN"
    return environment.compare("onednn", title, _VARIANTS, loss_tolerance=0.01)


if __name__ == "__main__":
    cli.run(runner.main(run_parent, environment.run_child, quick=environment.QUICK))
