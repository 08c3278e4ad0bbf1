"""Distributed trainer for binary image segmentation.

segmentation_models needs Keras 2, so the legacy Keras (tf-keras) and the
matching segmentation_models framework are selected here, before anything
imports TensorFlow, and so are TensorFlow's CPU allocator and kernels (see below). Python
runs this file before any `trainer.*` module, so every module and entry point
of the package gets these settings; a script of the user's only needs to
import something from `trainer` before `tensorflow`.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["SM_FRAMEWORK"] = "tf.keras"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF C++ info and warnings are noise here


def _physical_memory_mb() -> int | None:
    """The machine's memory in MiB, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (AttributeError, ValueError, OSError):
        return None


# TensorFlow's default CPU allocator gives every large tensor back to the OS when
# it is freed, so each training step page-faults its activations in afresh; its
# BFC allocator keeps and reuses them. Measured: 1.21x the training images/s of
# configs/small_data_cpu.py on 2 cores of an AMD EPYC (Zen 3), same losses
# (benchmarks/RESULTS.md). Its limit is capped at the machine's memory rather
# than TensorFlow's fixed 64 GiB. TF_CPU_ALLOCATOR_USE_BFC=false turns it off.
# It matters where oneDNN's kernels are off (below): with them on, TensorFlow
# uses oneDNN's own allocator, which reuses memory too, whatever this says.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
_MEMORY_MB = _physical_memory_mb()
if _MEMORY_MB:
    os.environ.setdefault("TF_CPU_BFC_MEM_LIMIT_IN_MB", str(_MEMORY_MB))

# TensorFlow runs oneDNN's CPU kernels by itself only on CPUs with AVX-512 VNNI,
# AVX512-BF16 or AMX; elsewhere (AVX2 only: most laptops, AMD EPYC Zen 3) it
# falls back to slower Eigen kernels. Measured: 1.84x the training images/s of
# configs/demo_cpu.py on 2 cores of an AMD EPYC (Zen 3), the same final loss
# (benchmarks/RESULTS.md). TF_ENABLE_ONEDNN_OPTS=0 turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
