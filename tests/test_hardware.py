"""The CPU precision that configs for CPUs choose by."""

import platform

from trainer import hardware

import pytest

_XEON_SAPPHIRE = "fpu vme sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
_XEON_SKYLAKE = "fpu vme sse2 avx2 avx512f avx512bw avx512_vnni"


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\n"
        f"flags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    return str(path)


@pytest.fixture
def on_linux(monkeypatch):
    monkeypatch.setattr(platform, "system", lambda: "Linux")


@pytest.mark.parametrize(
    "flags, precision",
    [
        (_XEON_SAPPHIRE, "mixed_bfloat16"),
        ("fpu sse2 avx2 avx512f avx512_bf16", "mixed_bfloat16"),  # Cooper Lake, Zen 4
        (_XEON_SKYLAKE, "float32"),
        ("fpu sse2 avx2", "float32"),
    ],
)
def test_cpu_precision_is_bfloat16_only_with_native_instructions(
    tmp_path, on_linux, flags, precision
):
    assert hardware.cpu_precision(_cpuinfo(tmp_path, flags)) == precision


def test_flags_are_the_first_flags_line(tmp_path, on_linux):
    assert hardware.cpu_flags(_cpuinfo(tmp_path, "sse2 avx512_bf16")) == {"sse2", "avx512_bf16"}


def test_unreadable_or_foreign_cpu_description_means_float32(tmp_path, on_linux, monkeypatch):
    assert hardware.cpu_precision(str(tmp_path / "absent")) == "float32"
    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    assert hardware.cpu_precision(_cpuinfo(tmp_path, _XEON_SAPPHIRE)) == "float32"
