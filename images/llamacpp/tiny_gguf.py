"""Tiny GGUF models with random weights, written with the `gguf` package (or llama.cpp's own gguf-py).

Two shapes: llama (the smallest model that serves) and deepseek2, DeepSeek-R1's own architecture (MLA
attention, a leading dense block, shared plus routed experts, sigmoid routing), which reaches code paths a
llama model never does. They load in llama.cpp and answer (nonsense, but non-empty) completions: enough to
prove that an image serves, without a download. Sharded copies stand in for R1's multi-file quants.

The llama.cpp images run this file at build time too (`python3 tiny_gguf.py deepseek2 --quant q4_0 OUT`): the
entrypoint's CPU probe loads that model (see entrypoint.sh). The tests import it as `support.tiny_gguf`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gguf
import numpy as np

# Weight types the writer can store; 2-D and 3-D weights take it, norms and biases stay F32 (as llama.cpp's
# quantizer leaves them). Q4_0 and Q8_0 rows need a multiple of 32 values, so every width here is one.
QUANTS = {
    "f32": gguf.GGMLQuantizationType.F32,
    "f16": gguf.GGMLQuantizationType.F16,
    "q4_0": gguf.GGMLQuantizationType.Q4_0,
    "q8_0": gguf.GGMLQuantizationType.Q8_0,
}
FILE_TYPES = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}

WORDS = ["hello", "world", "one", "two", "three", "un", "deux", "trois", "quatre", "cinq", "the", "answer", "is"]


def vocabulary(n_vocab: int = 0) -> tuple[list[bytes], list[float], list[int]]:
    """A byte-fallback SentencePiece vocabulary: control tokens, the 256 bytes, a few words, then filler
    words up to `n_vocab` (a realistic vocabulary size makes the output layer cost what it does for real)."""
    words = WORDS + [f"w{i}" for i in range(max(0, n_vocab - 3 - 256 - len(WORDS)))]
    tokens = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)] + [("\u2581" + w).encode() for w in words]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(words)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(words))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_head_kv: int | None = None,
    n_ff: int = 128,
    n_vocab: int = 0,
    f16: bool = False,
    quant: str | None = None,
    seed: int = 0,
    split_max_tensors: int = 0,
) -> Path:
    """Write the model to `path` (a single GGUF file) and return it. The defaults make a 0.5 MB model;
    n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, f16=True a 1.1B one.
    `quant` (one of QUANTS) stores the matrices in that type instead (the embedding stays F32/F16).
    split_max_tensors=N writes shards of at most N tensors instead, named as llama.cpp names them
    (`NAME-00001-of-00003.gguf`, with the split.* keys llama.cpp reads), and returns the first."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if f16 else np.float32
    tokens, scores, types = vocabulary(n_vocab)
    n_vocab = len(tokens)
    w = _writer(path, "llama", split_max_tensors, n_ctx=512, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head,
                n_head_kv=n_head_kv or n_head, rms_eps=1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_file_type(FILE_TYPES[quant] if quant else gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    _add_vocabulary(w, tokens, scores, types)

    def plain(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype))

    tensor = _weight_writer(w, rng, quant) if quant else plain
    plain("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        kv = n_embd // n_head * (n_head_kv or n_head)
        tensor(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        tensor(f"blk.{i}.attn_k.weight", kv, n_embd)
        tensor(f"blk.{i}.attn_v.weight", kv, n_embd)
        tensor(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    return _finish(w, path, split_max_tensors)


def _writer(path: Path, arch: str, split_max_tensors: int, *, n_ctx: int, n_embd: int, n_layer: int, n_ff: int,
            n_head: int, n_head_kv: int, rms_eps: float) -> gguf.GGUFWriter:
    """A writer for `arch` with the keys every architecture here has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=split_max_tensors)
    w.add_name(f"tiny-test-{arch}")
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(rms_eps)
    return w


def _add_vocabulary(w: gguf.GGUFWriter, tokens: list[bytes], scores: list[float], types: list[int]) -> None:
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)


def _finish(w: gguf.GGUFWriter, path: Path, split_max_tensors: int) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(path.parent.glob(f"{path.stem}-*-of-*{path.suffix}"))
    return shards[0] if split_max_tensors and shards else path


def _weight_writer(w: gguf.GGUFWriter, rng: np.random.Generator, quant: str) -> Callable[..., None]:
    """add(name, *shape): a random weight of numpy shape `shape` (ggml's dimensions reversed), stored as `quant`."""
    qtype = QUANTS[quant]

    def add(name: str, *shape: int) -> None:
        data = rng.standard_normal(shape, dtype=np.float32) * 0.02
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    return add


@dataclass(frozen=True)
class Deepseek2:
    """The widths of a `deepseek2` model. R1 itself: n_embd 7168, 61 layers (3 dense), 128 heads, q_lora 1536,
    kv_lora 512, rope 64, nope 128, v 128, n_ff 18432, n_ff_exp 2048, 256 experts (8 used, 1 shared), vocabulary
    129280. The defaults make a 2 MB model whose widths are multiples of 256, so that every quantized matrix
    multiplication can take the CPU's AMX and repacked paths."""

    n_embd: int = 256
    n_layer: int = 2
    n_dense_lead: int = 1
    n_head: int = 4
    q_lora_rank: int = 64
    kv_lora_rank: int = 64
    qk_rope_dim: int = 32
    qk_nope_dim: int = 32
    v_head_dim: int = 32
    n_ff: int = 512
    n_ff_exp: int = 256
    n_expert: int = 8
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ctx: int = 1024


R1 = Deepseek2(n_embd=7168, n_layer=61, n_dense_lead=3, n_head=128, q_lora_rank=1536, kv_lora_rank=512, qk_rope_dim=64,
               qk_nope_dim=128, v_head_dim=128, n_ff=18432, n_ff_exp=2048, n_expert=256, n_expert_used=8, n_ctx=163840)


# DeepSeek-R1's own chat template, as the `chat_template` of deepseek-ai/DeepSeek-R1's tokenizer_config.json since
# its February 2025 revision (https://huggingface.co/deepseek-ai/DeepSeek-R1/blob/main/tokenizer_config.json; the
# text here was taken, JSON-decoded, from a public copy of that file found with the project's code search, and its
# opening matches the mirror at git.xinyun.cn/xinyun/DeepSeek-R1, tokenizer_config.json of 2025-02-09). The
# generation prompt ends in `<｜Assistant｜><think>\n`: every answer starts inside a thinking block, so what a
# random-weights model writes is reasoning until it closes the block (it never does). An earlier answer's
# `...</think>` part is cut off before it goes back into the prompt. R1-0528's template no longer opens the block (the
# model writes `<think>` itself): docs/reasoning.md.
R1_CHAT_TEMPLATE = r"""{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}{{'\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\n' + '```json' + '\n' + tool['function']['arguments'] + '\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\n'}}{% endif %}"""


def deepseek2_writer(path: Path, d: Deepseek2, n_vocab: int, file_type: int, split_max_tensors: int = 0,
                     chat_template: str | None = None) -> gguf.GGUFWriter:
    """A writer with a `deepseek2` header, as llama.cpp's converter writes DeepSeek-R1's, and its vocabulary;
    `chat_template` becomes tokenizer.chat_template, which llama-server renders with --jinja."""
    tokens, scores, types = vocabulary(n_vocab)
    # MLA: one latent KV "head" shared by all heads.
    w = _writer(path, "deepseek2", split_max_tensors, n_ctx=d.n_ctx, n_embd=d.n_embd, n_layer=d.n_layer, n_ff=d.n_ff,
                n_head=d.n_head, n_head_kv=1, rms_eps=1e-6)
    w.add_leading_dense_block_count(d.n_dense_lead)
    w.add_vocab_size(len(tokens))
    w.add_q_lora_rank(d.q_lora_rank)
    w.add_kv_lora_rank(d.kv_lora_rank)
    w.add_key_length(d.kv_lora_rank + d.qk_rope_dim)
    w.add_value_length(d.kv_lora_rank)
    w.add_key_length_mla(d.qk_nope_dim + d.qk_rope_dim)
    w.add_value_length_mla(d.v_head_dim)
    w.add_expert_feed_forward_length(d.n_ff_exp)
    w.add_expert_count(d.n_expert)
    w.add_expert_used_count(d.n_expert_used)
    w.add_expert_shared_count(d.n_expert_shared)
    w.add_expert_weights_scale(2.5)
    w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_rope_dimension_count(d.qk_rope_dim)
    w.add_file_type(file_type)
    _add_vocabulary(w, tokens, scores, types)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    return w


def deepseek2_tensors(d: Deepseek2, n_vocab: int) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(name, numpy shape, kind) of every tensor, in the converter's order and split (MLA's k_b and v_b apart):
    kind is "norm" (ones), "f32" (small random, kept F32 as quantizers keep routers), "zeros" (the routing bias),
    "embedding" or "weight" (the quantized kind)."""
    k_mla = d.qk_nope_dim + d.qk_rope_dim
    ff_shared = d.n_ff_exp * d.n_expert_shared
    yield "token_embd.weight", (n_vocab, d.n_embd), "embedding"
    yield "output_norm.weight", (d.n_embd,), "norm"
    yield "output.weight", (n_vocab, d.n_embd), "weight"
    for i in range(d.n_layer):
        b = f"blk.{i}"
        yield f"{b}.attn_norm.weight", (d.n_embd,), "norm"
        yield f"{b}.attn_q_a_norm.weight", (d.q_lora_rank,), "norm"
        yield f"{b}.attn_kv_a_norm.weight", (d.kv_lora_rank,), "norm"
        yield f"{b}.attn_q_a.weight", (d.q_lora_rank, d.n_embd), "weight"
        yield f"{b}.attn_q_b.weight", (d.n_head * k_mla, d.q_lora_rank), "weight"
        yield f"{b}.attn_kv_a_mqa.weight", (d.kv_lora_rank + d.qk_rope_dim, d.n_embd), "weight"
        yield f"{b}.attn_k_b.weight", (d.n_head, d.kv_lora_rank, d.qk_nope_dim), "weight"
        yield f"{b}.attn_v_b.weight", (d.n_head, d.v_head_dim, d.kv_lora_rank), "weight"
        yield f"{b}.attn_output.weight", (d.n_embd, d.n_head * d.v_head_dim), "weight"
        yield f"{b}.ffn_norm.weight", (d.n_embd,), "norm"
        if i < d.n_dense_lead:
            yield f"{b}.ffn_gate.weight", (d.n_ff, d.n_embd), "weight"
            yield f"{b}.ffn_up.weight", (d.n_ff, d.n_embd), "weight"
            yield f"{b}.ffn_down.weight", (d.n_embd, d.n_ff), "weight"
            continue
        yield f"{b}.ffn_gate_inp.weight", (d.n_expert, d.n_embd), "f32"
        yield f"{b}.exp_probs_b.bias", (d.n_expert,), "zeros"
        yield f"{b}.ffn_gate_exps.weight", (d.n_expert, d.n_ff_exp, d.n_embd), "weight"
        yield f"{b}.ffn_up_exps.weight", (d.n_expert, d.n_ff_exp, d.n_embd), "weight"
        yield f"{b}.ffn_down_exps.weight", (d.n_expert, d.n_embd, d.n_ff_exp), "weight"
        yield f"{b}.ffn_gate_shexp.weight", (ff_shared, d.n_embd), "weight"
        yield f"{b}.ffn_up_shexp.weight", (ff_shared, d.n_embd), "weight"
        yield f"{b}.ffn_down_shexp.weight", (d.n_embd, ff_shared), "weight"


def write_tiny_deepseek2(path: Path, dims: Deepseek2 = Deepseek2(), *, n_vocab: int = 0, quant: str = "f32", seed: int = 0,
                         split_max_tensors: int = 0, chat_template: str | None = None) -> Path:
    """A `deepseek2` GGUF of `dims` with random weights: DeepSeek-R1's layout (MLA with the split k_b/v_b tensors,
    leading dense blocks, then MoE blocks with sigmoid gating, a routing bias and shared experts), small.
    `quant` is one of QUANTS; k-quants come from llama-quantize. `chat_template` (e.g. R1_CHAT_TEMPLATE) goes into
    the metadata as the converter writes a real model's."""
    rng = np.random.default_rng(seed)
    n_vocab = len(vocabulary(n_vocab)[0])
    w = deepseek2_writer(path, dims, n_vocab, FILE_TYPES[quant], split_max_tensors, chat_template)
    weight = _weight_writer(w, rng, quant)
    for name, shape, kind in deepseek2_tensors(dims, n_vocab):
        if kind == "norm":
            w.add_tensor(name, np.ones(shape, dtype=np.float32))
        elif kind == "zeros":
            w.add_tensor(name, np.zeros(shape, dtype=np.float32))
        elif kind in ("f32", "embedding"):
            w.add_tensor(name, rng.standard_normal(shape, dtype=np.float32) * 0.02)
        else:
            weight(name, *shape)
    return _finish(w, path, split_max_tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight GGUF model.")
    parser.add_argument("arch", choices=["llama", "deepseek2"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--quant", choices=sorted(QUANTS), default="f32")
    args = parser.parse_args()
    if args.arch == "llama":
        # Widths that are multiples of 256, so that quantized matrices can take the AMX and repacked paths.
        write_tiny_model(args.out, n_embd=256, n_ff=512, quant=args.quant)
    else:
        write_tiny_deepseek2(args.out, quant=args.quant)


if __name__ == "__main__":
    main()
