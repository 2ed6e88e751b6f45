"""kt-kernel's CPU kernel variants: which exist in this image, and whether one runs on this CPU.

`cpu_probe.py --list` prints the variants this image carries, best first; `--list NAME` checks that NAME is one of
them. `cpu_probe.py --variant NAME` loads that variant's extension (without torch, so that it is quick, also under
an emulator) and runs a small routed-expert layer with its GGUF (LLAMAFILE) kernels on Q8_0 weights, checked against
numpy: exit 0 when the result is right, a signal (SIGILL: the CPU lacks an instruction) or 1 otherwise. For `amx`
it first asks the kernel for the AMX tile state and runs AMX tile instructions itself: that variant's GGUF kernels
are AVX-512 code, which runs on CPUs without AMX, while its AMXINT4/AMXINT8 kernels would die there. The entrypoint
runs it in a child process per variant, best first, and loads the first that passes.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import mmap
import os
import sys

import numpy as np

# kt-kernel's own order (kt_kernel/_cpu_detect.py), best first.
VARIANTS = ("amx", "avx512_bf16", "avx512_vbmi", "avx512_vnni", "avx512_base", "avx2")
QK8_0 = 32  # values per Q8_0 block: an fp16 scale, then 32 int8


def package_dir() -> str:
    spec = importlib.util.find_spec("kt_kernel")  # finds the folder without running kt_kernel/__init__ (torch)
    if spec is None or not spec.submodule_search_locations:
        sys.exit("kt_kernel is not installed")
    return list(spec.submodule_search_locations)[0]


def extension(variant: str) -> str | None:
    found = glob.glob(os.path.join(package_dir(), f"_kt_kernel_ext_{variant}.*.so"))
    return found[0] if found else None


def available() -> list[str]:
    return [v for v in VARIANTS if extension(v)]


def load(variant: str):
    spec = importlib.util.spec_from_file_location("kt_kernel_ext", extension(variant))
    module = importlib.util.module_from_spec(spec)
    sys.modules["kt_kernel_ext"] = module
    spec.loader.exec_module(module)
    return module


# ldtilecfg [rdi]; tilezero tmm0; tilerelease; ret
AMX_CODE = bytes.fromhex("c4e2784907" "c4e27b49c0" "c4e27849c0" "c3")
ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA, SYS_ARCH_PRCTL = 0x1023, 18, 158


def check_amx() -> None:
    """Ask Linux for the AMX tile data state (refused where the CPU or kernel lacks it), then configure, zero and
    release a tile: SIGILL where AMX is not there."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        sys.exit(f"amx: the kernel grants no AMX tile state here ({os.strerror(ctypes.get_errno())})")
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    config[16] = 64  # tile 0: 64 bytes per row (colsb[0], little-endian uint16 at byte 16)
    config[48] = 16  # tile 0: 16 rows (rows[0] at byte 48)
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(AMX_CODE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)(ctypes.addressof(config))


def q8_0(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q8_0 bytes of a float matrix (rows quantized along the last axis), and the values they decode to."""
    blocks = weights.reshape(-1, QK8_0)
    scale = (np.abs(blocks).max(axis=1) / 127).astype(np.float16)
    safe = np.where(scale == 0, 1, scale).astype(np.float32)
    q = np.clip(np.round(blocks / safe[:, None]), -127, 127).astype(np.int8)
    raw = np.empty((blocks.shape[0], 2 + QK8_0), dtype=np.uint8)
    raw[:, :2] = scale.view(np.uint8).reshape(-1, 2)
    raw[:, 2:] = q.view(np.uint8)
    return raw.reshape(-1), (q.astype(np.float32) * scale.astype(np.float32)[:, None]).reshape(weights.shape)


def bf16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bf16 bits (uint16) of float32 values, rounded to nearest, and the float32 values they stand for."""
    bits = x.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return rounded, (rounded.astype(np.uint32) << 16).view(np.float32)


def expert_layer(ext, experts: int, top_k: int, hidden: int, inter: int, qlen: int, threads: int, seed: int = 0):
    """One routed-expert layer on Q8_0 weights: kt-kernel's output and numpy's, for the same bf16 input."""
    moe_mod = ext.moe
    ggml_type = ext.kvcache.ggml_type
    rng = np.random.default_rng(seed)
    gate, up = (rng.standard_normal((experts, inter, hidden), dtype=np.float32) / np.sqrt(hidden) for _ in range(2))
    down = rng.standard_normal((experts, hidden, inter), dtype=np.float32) / np.sqrt(inter)
    (gate_q, gate_f), (up_q, up_f), (down_q, down_f) = q8_0(gate), q8_0(up), q8_0(down)
    x_bits, x = bf16(rng.standard_normal((qlen, hidden), dtype=np.float32))
    ids = np.stack([rng.choice(experts, top_k, replace=False) for _ in range(qlen)]).astype(np.int64)
    w = rng.random((qlen, top_k), dtype=np.float32)

    pool = ext.WorkerPoolConfig()
    pool.subpool_count = 1
    pool.subpool_numa_map = [0]
    pool.subpool_thread_count = [threads]
    cpu = ext.CPUInfer(pool)
    gpu_mask = np.zeros(experts, dtype=np.bool_)  # every expert on the CPU
    cfg = moe_mod.MOEConfig(experts, top_k, hidden, inter, gpu_mask.ctypes.data)
    cfg.layer_idx = 0
    cfg.pool = cpu.backend_
    cfg.m_block = 32
    cfg.group_min_len = 10
    cfg.max_len = cfg.group_max_len = max(qlen, 32)
    cfg.gate_proj, cfg.up_proj, cfg.down_proj = gate_q.ctypes.data, up_q.ctypes.data, down_q.ctypes.data
    cfg.gate_type = cfg.up_type = cfg.down_type = ggml_type.Q8_0
    cfg.hidden_type = ggml_type.BF16
    moe = moe_mod.MOE(cfg)
    mapping = np.arange(experts, dtype=np.int32)
    cpu.submit(moe.load_weights_task(mapping.ctypes.data))
    cpu.sync()

    out = np.zeros((qlen, hidden), dtype=np.uint16)  # bf16
    bsz = np.array([qlen], dtype=np.int32)
    cpu.submit(moe.forward_task(bsz.ctypes.data, top_k, ids.ctypes.data, w.ctypes.data, x_bits.ctypes.data, out.ctypes.data, False))
    cpu.sync()
    got = (out.astype(np.uint32) << 16).view(np.float32)

    want = np.zeros((qlen, hidden), dtype=np.float32)
    for t in range(qlen):
        for k in range(top_k):
            e = ids[t, k]
            g, u = gate_f[e] @ x[t], up_f[e] @ x[t]
            want[t] += w[t, k] * (down_f[e] @ (g / (1 + np.exp(-g)) * u))
    return got, want, (cpu, moe)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--list", nargs="?", const="", metavar="NAME", help="print the variants (or check NAME)")
    parser.add_argument("--variant", choices=VARIANTS, help="load this variant and run the check")
    args = parser.parse_args()
    have = available()
    if args.list is not None:
        if args.list and args.list not in have:
            print(f"error: CPU variant {args.list!r} is not in this image; choose auto or one of: {' '.join(have)}", file=sys.stderr)
            return 1
        print("\n".join([args.list] if args.list else have))
        return 0
    if args.variant not in have:
        print(f"error: CPU variant {args.variant!r} is not in this image (it has: {' '.join(have)})", file=sys.stderr)
        return 1
    if args.variant == "amx":
        check_amx()
    got, want, _ = expert_layer(load(args.variant), experts=8, top_k=2, hidden=256, inter=256, qlen=3, threads=2)
    err = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-6))
    print(f"{args.variant}: expert layer relative error {err:.2e}")
    return 0 if err < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())
