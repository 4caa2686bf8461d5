"""The catalog's `cpu` entry describes the host from /proc/cpuinfo's flags (issue 21, item 5): an
AVX-512 CPU with AVX512-BF16 and no AMX was called "AVX2 FMA", and had no bf16 peak, so a bf16
prediction on it raised."""
from __future__ import annotations

import pytest

from fastmix.devices.catalog import load_catalog
from fastmix.devices.environment import cpu_flags, cpu_isa

ZEN4 = frozenset({"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"})
SAPPHIRE = ZEN4 | {"amx_tile", "amx_bf16", "amx_int8", "avx512_fp16"}
HASWELL = frozenset({"sse2", "avx", "avx2", "fma"})


@pytest.mark.parametrize("flags, isa", [
    (ZEN4, "AVX-512, AVX512-BF16, no AMX"),
    (SAPPHIRE, "AVX-512, AVX512-BF16, AVX512-FP16, AMX-BF16"),
    (HASWELL, "AVX2 FMA, no AMX"),
    (frozenset({"sse2"}), "no AVX2, no AMX"),
    (frozenset(), "flags unknown"),
])
def test_isa_from_flags(flags, isa):
    assert cpu_isa(flags) == isa


def test_bf16_peak_follows_the_flags(tmp_path):
    fp32 = load_catalog()["cpu"].fp32
    zen4 = load_catalog(host_flags=ZEN4)["cpu"]
    assert zen4.peak_tflops("bf16") == 2 * fp32 and zen4.name.endswith(": AVX-512, AVX512-BF16, no AMX)")
    assert "AVX2 FMA" not in zen4.name
    # no bf16 dot products: no bf16 peak; AMX: an unknown one (no guess), unless the catalog gives it
    for flags in (HASWELL, SAPPHIRE):
        cpu = load_catalog(host_flags=flags)["cpu"]
        assert not cpu.supports("bf16")
        with pytest.raises(ValueError, match="no bf16"):
            cpu.peak_tflops("bf16")
    mine = tmp_path / "mine.yaml"
    mine.write_text("cpu: {bf16_tensor: 9.0}\n")
    assert load_catalog(mine, host_flags=SAPPHIRE)["cpu"].peak_tflops("bf16") == 9.0


def test_cpuinfo_is_read(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 fma avx512f\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx2", "fma", "avx512f"}
    assert cpu_flags(str(tmp_path / "absent")) == frozenset()


def test_the_catalog_describes_this_host():
    cpu = load_catalog()["cpu"]
    flags = cpu_flags()
    assert cpu_isa(flags) in cpu.name
    assert cpu.supports("bf16") == ("avx512_bf16" in flags and "amx_bf16" not in flags)
