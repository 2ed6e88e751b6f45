"""An R1-shaped GGUF at DeepSeek-R1's real widths and fewer layers, for `builder plan`'s proof on the GPU machine.

R1's own layout (tiny_gguf.deepseek2_tensors with tiny_gguf.R1's widths and vocabulary size), quantized as its Q4_K
quants are (Q4_K matrices; MLA's k_b/v_b in Q8_0, whose 32-value blocks fit their 128-wide rows), random weights.
Each MoE layer's routed experts are 6.3 GB, so a few layers already overflow a 24 GB GPU. Quantizing tens of GB
with numpy would take an hour: the blocks are written directly instead, random bits with small fixed scales (the
speed of a matrix multiplication does not depend on the values).

Two quant mixes: q4_k (every matrix Q4_K) and q2_k (the routed experts Q2_K, everything else Q4_K: the shape of
unsloth's dynamic low-bit quants, which keep attention, shared experts and dense layers at higher bits). With
--header-only the tensor data is a hole (a sparse file of the full size): the header and tensor table are exact,
which is all `builder plan` reads, for trying the planner where the GPU is not.

usage: python3 r1_shaped.py OUT.gguf [--moe-layers N] [--mix q4_k|q2_k] [--header-only]
       (with llama.cpp's gguf-py and images/llamacpp on PYTHONPATH)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import gguf
import numpy as np
from tiny_gguf import R1, Deepseek2, deepseek2_tensors, deepseek2_writer

Q4_K, Q8_0, Q2_K = gguf.GGMLQuantizationType.Q4_K, gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q2_K
FILE_TYPES = {"q4_k": gguf.LlamaFileType.MOSTLY_Q4_K_M, "q2_k": gguf.LlamaFileType.MOSTLY_Q2_K}


def block_template(qtype: gguf.GGMLQuantizationType, n_bytes: int, rng: np.random.Generator) -> np.ndarray:
    """`n_bytes` of random blocks of `qtype` with small, finite scales (f16): Q4_K's d and dmin first, Q8_0's d
    first, Q2_K's d and dmin last."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, size=(n_bytes // type_size, type_size), dtype=np.uint8)
    scales = 1 if qtype == Q8_0 else 2
    at = type_size - 2 * scales if qtype == Q2_K else 0
    blocks[:, at:at + 2 * scales] = np.frombuffer(np.array([1e-4] * scales, dtype=np.float16).tobytes(), dtype=np.uint8)
    return blocks.reshape(-1)


def write(path: Path, moe_layers: int, dims: Deepseek2 = R1, n_vocab: int = 129280, mix: str = "q4_k",
          header_only: bool = False) -> Path:
    dims = dataclasses.replace(dims, n_layer=dims.n_dense_lead + moe_layers)
    tensors = list(deepseek2_tensors(dims, n_vocab))
    w = deepseek2_writer(path, dims, n_vocab, FILE_TYPES[mix])
    rng = np.random.default_rng(0)
    plans = []
    for name, shape, kind in tensors:
        if kind in ("norm", "zeros", "f32"):
            data = (np.ones(shape, np.float32) if kind == "norm" else np.zeros(shape, np.float32) if kind == "zeros"
                    else rng.standard_normal(shape, dtype=np.float32) * 0.02)
            w.add_tensor_info(name, data.shape, data.dtype, data.nbytes)
            plans.append((name, data, None))
            continue
        qtype = (Q8_0 if name.endswith(("attn_k_b.weight", "attn_v_b.weight"))
                 else Q2_K if mix == "q2_k" and "_exps." in name else Q4_K)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        byte_shape = (*shape[:-1], shape[-1] // block * type_size)
        n_bytes = int(np.prod(byte_shape))
        w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), n_bytes, raw_dtype=qtype)
        plans.append((name, None, (qtype, n_bytes)))
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if header_only:
        w.close()
        data = sum(w.ggml_pad(raw[1] if raw else data.nbytes, w.data_alignment) for _, data, raw in plans)
        with path.open("r+b") as f:
            f.truncate(w.ggml_pad(f.seek(0, 2), w.data_alignment) + data)
        print(f"{path}: header only, {path.stat().st_size / 1e9:.1f} GB (sparse)")
        return path
    # One random buffer per (type, size), reused: the experts' gate, up and down tensors share a size.
    buffers: dict[tuple[int, int], np.ndarray] = {}
    start = time.monotonic()
    for name, data, raw in plans:
        if raw is None:
            w.write_tensor_data(data)
            continue
        if raw not in buffers:
            buffers[raw] = block_template(raw[0], raw[1], rng)
        w.write_tensor_data(buffers[raw])
    w.close()
    size = path.stat().st_size
    print(f"{path}: {size / 1e9:.1f} GB, {dims.n_layer} layers ({moe_layers} MoE), {mix}, {time.monotonic() - start:.0f} s")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--moe-layers", type=int, default=5)
    parser.add_argument("--mix", choices=sorted(FILE_TYPES), default="q4_k")
    parser.add_argument("--header-only", action="store_true")
    args = parser.parse_args()
    write(args.out, args.moe_layers, mix=args.mix, header_only=args.header_only)


if __name__ == "__main__":
    main()
