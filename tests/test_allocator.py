"""TensorFlow's CPU allocator: the reusing BFC allocator unless the user says otherwise."""

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
tf.ones([256, 256]) * 2
try:
    tf.config.experimental.get_memory_info("CPU:0")
    print("bfc", os.environ.get("TF_CPU_BFC_MEM_LIMIT_IN_MB"))
except ValueError:
    print("default")
"""


def _allocator(**env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPU_")}
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


def test_importing_trainer_selects_the_bfc_allocator_capped_at_the_machines_memory():
    kind, limit_mb = _allocator()
    physical_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert (kind, int(limit_mb)) == ("bfc", physical_mb)


@pytest.mark.slow
def test_the_users_choice_of_allocator_and_limit_is_kept():
    assert _allocator(TF_CPU_ALLOCATOR_USE_BFC="false") == ["default"]
    assert _allocator(TF_CPU_BFC_MEM_LIMIT_IN_MB="4096") == ["bfc", "4096"]
