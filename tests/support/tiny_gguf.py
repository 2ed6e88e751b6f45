"""A tiny llama-architecture GGUF with random weights, written with the `gguf` package.

It loads in llama.cpp and answers (nonsense, but non-empty) completions: enough to prove that an image
serves, without a download. Sharded copies stand in for DeepSeek-R1's multi-file quants.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

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
    seed: int = 0,
    split_max_tensors: int = 0,
) -> Path:
    """Write the model to `path` (a single GGUF file) and return it. The defaults make a 0.5 MB model;
    n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, f16=True a 1.1B one.
    split_max_tensors=N writes shards of at most N tensors instead, named as llama.cpp names them
    (`NAME-00001-of-00003.gguf`, with the split.* keys llama.cpp reads), and returns the first."""
    rng = np.random.default_rng(seed)
    dtype = np.float16 if f16 else np.float32
    tokens, scores, types = vocabulary(n_vocab)
    n_vocab = len(tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    w.add_name("tiny-test-llama")
    w.add_context_length(512)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv or n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def tensor(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dtype))

    tensor("token_embd.weight", n_vocab, n_embd)
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
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(path.parent.glob(f"{path.stem}-*-of-*{path.suffix}"))
    return shards[0] if split_max_tensors and shards else path
