"""What this machine's CPU computes fast, for configs that choose by it.

TensorFlow has no public call that says whether its oneDNN kernels run
bfloat16 natively on this CPU, so the Linux kernel's feature flags are read
here by hand (a few lines; no package of its own is worth the dependency).
"""

import platform

# x86 instructions with which oneDNN computes bfloat16 convolutions natively.
# Without them bfloat16 has no native kernels, so float32 is the safe choice
# (bfloat16's speed on such CPUs has not been measured here).
_BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo_path: str = _CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them; empty where it does not.

    Args:
      cpuinfo_path: Linux's CPU description (a parameter for tests).

    Returns:
      The words of the first `flags` line of `cpuinfo_path`, or an empty set
      off Linux or when the file cannot be read.
    """
    if platform.system() != "Linux":
        return frozenset()
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_precision(cpuinfo_path: str = _CPUINFO) -> str:
    """The faster `train.precision` for training on this machine's CPU.

    Args:
      cpuinfo_path: Linux's CPU description (a parameter for tests).

    Returns:
      'mixed_bfloat16' where the CPU has AVX512-BF16 or AMX (recent Xeons, AMD
      Zen 4 and later), 'float32' everywhere else.
    """
    if cpu_flags(cpuinfo_path) & _BFLOAT16_FLAGS:
        return "mixed_bfloat16"
    return "float32"
