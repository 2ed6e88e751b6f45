"""images/llamacpp/amx_tile_check.py, the build's check that every AMX `ldtilecfg` loads a configuration with rows and
colsb set, against machine code of known shape: the exact sequence GCC 12 emitted for ggml's tile configuration in
the shipped image (issue: every tile configured with zero rows), the host compiler's output for ggml's code as
upstream writes it and as images/llamacpp/patches/ rewrites it, and, on a host with AMX, the truth: the same
objects executed."""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.prerequisites import REPO

CHECK = REPO / "images" / "llamacpp" / "amx_tile_check.py"

pytestmark = pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("g++") is None, reason="needs binutils and g++")

# ggml's tile configuration type and the tile shapes of ggml/src/ggml-cpu/amx/mmq.cpp (llama.cpp 0c1e570).
CONFIG_TYPE = """
#include <immintrin.h>
#include <cstdint>
#include <cstring>
struct tile_config_t {
    uint8_t palette_id = 0;
    uint8_t start_row = 0;
    uint8_t reserved_0[14] = {0};
    uint16_t colsb[16] = {0};
    uint8_t rows[16] = {0};
};
#define SET_TILES(tc) \\
    tc.palette_id = 1; tc.start_row = 0; \\
    tc.rows[0] = 8;  tc.colsb[0] = 64; tc.rows[1] = 8;  tc.colsb[1] = 64; \\
    tc.rows[2] = 16; tc.colsb[2] = 32; tc.rows[3] = 16; tc.colsb[3] = 32; \\
    tc.rows[4] = 16; tc.colsb[4] = 64; tc.rows[5] = 16; tc.colsb[5] = 64; \\
    tc.rows[6] = 16; tc.colsb[6] = 64; tc.rows[7] = 16; tc.colsb[7] = 64;
"""
UPSTREAM = CONFIG_TYPE + """
__attribute__((noinline)) void tile_config_init(void) {
    alignas(64) tile_config_t tc = {};
    SET_TILES(tc)
    _tile_loadconfig(&tc);
}
"""
PATCHED = CONFIG_TYPE + """
static constexpr tile_config_t tile_config(void) { tile_config_t tc = {}; SET_TILES(tc) return tc; }
__attribute__((noinline)) void tile_config_init(void) {
    alignas(64) static constexpr tile_config_t tc = tile_config();
    _tile_loadconfig(&tc);
}
"""
# A tile load after the configuration: SIGILL when the tile it loads has zero rows.
PROBE = """
extern "C" int probe(void) {
    alignas(64) static uint8_t data[16 * 64] = {1};
    tile_config_init();
    _tile_loadd(0, data, 64);
    _tile_release();
    return 0;
}
"""

# A 64-byte stack copy zeroed, palette_id 1 stored.
STACK_COPY_ZEROED = """
    .text
    .globl tile_config_init
    .type tile_config_init, @function
tile_config_init:
    push %rbp
    mov %rsp,%rbp
    and $-64,%rsp
    sub $0x100,%rsp
    vpxor %xmm0,%xmm0,%xmm0
    vmovdqa64 %zmm0,0xc0(%rsp)
    movb $0x1,0xc0(%rsp)
"""
# What GCC 12.2 (Debian bookworm, the CPU image's compiler) made of UPSTREAM inside ggml_backend_amx_mul_mat: the
# 64 bytes zeroed, palette_id stored, rows[] and colsb[] dropped.
GCC12_SHIPPED = STACK_COPY_ZEROED + """
    ldtilecfg 0xc0(%rsp)
    leave
    ret
"""
# The same stack copy with rows and colsb stored from registers that hold real values.
STACK_COPY_WRITTEN = STACK_COPY_ZEROED + """
    movabs $0x0040004000400040,%rax
    mov %rax,0xd0(%rsp)
    movl $0x10100808,0xf0(%rsp)
    ldtilecfg 0xc0(%rsp)
    leave
    ret
"""


def rodata_config(rows: int) -> str:
    colsb = ", ".join(["64"] * 8 + ["0"] * 8)
    return f"""
    .section .rodata
    .balign 64
config:
    .byte 1, 0
    .zero 14
    .short {colsb}
    .byte {", ".join([str(rows)] * 8 + ["0"] * 8)}
    .text
    .globl tile_config_init
    .type tile_config_init, @function
tile_config_init:
    ldtilecfg config(%rip)
    ret
"""


def shared_object(tmp_path: Path, name: str, source: str, language: str) -> Path:
    src = tmp_path / f"{name}.{language}"
    src.write_text(source)
    out = tmp_path / f"lib{name}.so"
    flags = ["-std=c++17", "-O2", "-mamx-tile", "-mamx-int8", "-mavx512f"] if language == "cpp" else []
    subprocess.run(["g++", *flags, "-shared", "-fPIC", "-o", str(out), str(src)], check=True, capture_output=True, text=True)
    return out


def check(*libraries: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), *map(str, libraries)], capture_output=True, text=True)


def test_the_shipped_miscompile_is_refused_by_name(tmp_path: Path):
    lib = shared_object(tmp_path, "gcc12", GCC12_SHIPPED, "s")
    result = check(lib)
    assert result.returncode == 1
    line, = result.stderr.splitlines()
    assert line.startswith(f"amx_tile_check: {lib}: ldtilecfg at 0x") and "in tile_config_init" in line
    assert "gets no colsb or rows stored before it (only zeroes)" in line


def test_a_stack_copy_with_rows_and_colsb_stored_passes(tmp_path: Path):
    result = check(shared_object(tmp_path, "written", STACK_COPY_WRITTEN, "s"))
    assert result.returncode == 0, result.stderr
    assert "every ldtilecfg in 1 file(s) loads a configuration with rows and colsb set" in result.stdout


@pytest.mark.parametrize(("rows", "ok"), [(16, True), (0, False)])
def test_a_constant_configuration_is_read_from_the_file(tmp_path: Path, rows: int, ok: bool):
    result = check(shared_object(tmp_path, f"rodata{rows}", rodata_config(rows), "s"))
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert "its constant configuration sets no tile" in result.stderr


def test_a_library_without_amx_passes_and_no_argument_is_usage(tmp_path: Path):
    assert check(shared_object(tmp_path, "plain", "int f(void) { return 1; }", "cpp")).returncode == 0
    assert check().returncode == 2


def test_the_patched_code_passes_with_this_compiler(tmp_path: Path):
    """The patch's form keeps the configuration in read-only data whatever the compiler does with stores."""
    lib = shared_object(tmp_path, "patched", PATCHED, "cpp")
    assert check(lib).returncode == 0
    assert "(%rip)" in subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True).stdout.split("ldtilecfg", 1)[1].splitlines()[0]


def test_upstreams_code_is_judged_as_this_compiler_builds_it(tmp_path: Path):
    """GCC 12 (Debian bookworm's, the CPU image's) drops the stores: refused. Another compiler may keep them; then the
    check must pass it, and the verdict is shown."""
    lib = shared_object(tmp_path, "upstream", UPSTREAM, "cpp")
    major = int(subprocess.run(["g++", "-dumpversion"], capture_output=True, text=True, check=True).stdout.split(".")[0])
    result = check(lib)
    if major == 12:
        assert result.returncode == 1 and "gets no colsb or rows stored" in result.stderr
    else:
        assert result.returncode in (0, 1), result.stderr


def _amx_granted() -> bool:
    """This CPU lists AMX and the kernel grants the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA)."""
    if "amx_tile" not in Path("/proc/cpuinfo").read_text():
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return libc.syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists() or not _amx_granted(), reason="needs a CPU with AMX and the kernel's grant")
@pytest.mark.parametrize("form", ["upstream", "patched"])
def test_on_an_amx_host_the_verdict_is_what_the_cpu_does(tmp_path: Path, form: str):
    """Run the object: a refused configuration must die at its first tile load (SIGILL), a passed one must run."""
    lib = shared_object(tmp_path, form, (UPSTREAM if form == "upstream" else PATCHED) + PROBE, "cpp")
    verdict = check(lib).returncode
    runner = ("import ctypes, ctypes.util, sys\n"
              "libc = ctypes.CDLL(ctypes.util.find_library('c'))\n"
              "assert libc.syscall(158, 0x1023, 18) == 0\n"
              f"sys.exit(ctypes.CDLL({str(lib)!r}).probe())\n")
    ran = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True)
    assert ran.returncode in (0, -4), ran.stderr  # ran, or SIGILL
    assert (verdict == 0) == (ran.returncode == 0), f"check said {verdict}, the CPU said {ran.returncode}"
    if form == "patched":
        assert ran.returncode == 0
