"""TensorFlow's CPU runtime as `import trainer` sets it, unless the user says otherwise.

The reusing BFC allocator, and oneDNN's kernels on every x86 CPU (TensorFlow
turns them on by itself only on CPUs with AVX-512 VNNI, AVX512-BF16 or AMX).
"""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# BFC keeps allocation statistics; TensorFlow's default CPU allocator has none.
_PROBE = """
import os
import trainer
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
tf.ones([256, 256]) * 2
print("onednn" if _pywrap_util_port.IsMklEnabled() else "eigen")
try:
    tf.config.experimental.get_memory_info("CPU:0")
    print("bfc", os.environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB"))
except ValueError:
    print("default")
"""


def _runtime(**env):
    """What a process that imports trainer runs: `[kernels, allocator, (BFC limit)]`."""
    names = ("TF_CPU_", "TF_ENABLE_ONEDNN_OPTS")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(names)}
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return completed.stdout.split()


def _physical_mb():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20


def test_importing_trainer_selects_onednn_and_the_bfc_allocator_capped_at_the_machines_memory():
    kernels, allocator, limit_mb = _runtime()
    assert (kernels, allocator, int(limit_mb)) == ("onednn", "bfc", _physical_mb())


@pytest.mark.slow
def test_the_users_choice_of_kernels_allocator_and_limit_is_kept():
    # With oneDNN's kernels TensorFlow always uses oneDNN's own reusing allocator.
    assert _runtime(TF_ENABLE_ONEDNN_OPTS="0") == ["eigen", "bfc", str(_physical_mb())]
    assert _runtime(TF_ENABLE_ONEDNN_OPTS="0", TF_CPU_ALLOCATOR_USE_BFC="false") == [
        "eigen",
        "default",
    ]
    assert _runtime(TF_CPU_BFC_MEM_LIMIT_IN_MB="4096")[1:] == ["bfc", "4096"]
