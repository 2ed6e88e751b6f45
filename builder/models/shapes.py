"""How a model's weights divide up, for `builder plan`: routed experts (which may stay in RAM) against the rest,
the embedding (llama.cpp keeps it in RAM), the output head, and the KV cache per token.

Read exactly from a GGUF's header when the file is here, estimated from the catalog's architecture otherwise
(before a 400 GB download, that is all there is).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from builder.core.errors import UserError, shown
from builder.models.catalog import SHARD

GB = 10**9
EXPERT_TENSOR = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down|gate_up)_(ch|)exps\.")
BLOCK_TENSOR = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class Shape:
    name: str
    total: int  # bytes of weights
    experts: int  # bytes of routed experts (0: a dense model)
    embedding: int  # token_embd: llama.cpp keeps it in RAM
    output: int  # the output head: on the GPU once every layer is
    layers: int
    dense_layers: int  # leading layers without experts (DeepSeek-R1: 3)
    kv_per_token: int  # bytes of KV cache per token of context (f16)
    max_context: int
    active_experts: float  # the fraction of a layer's experts each token reads (R1: 8 of 256)
    source: str  # "GGUF header" or "catalog estimate"
    # From a GGUF's tensor table (empty for a catalog estimate, which assumes equal layers): each layer's bytes
    # without its routed experts, and each routed-expert tensor as (layer, kind, bytes), kind as in its name
    # ("gate_exps", "up_exps", "down_exps", ...): the unit `builder plan` places, as llama.cpp's --fit does.
    layer_bytes: tuple[int, ...] = ()
    expert_tensors: tuple[tuple[int, str, int], ...] = ()

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.experts else 0

    @property
    def layer(self) -> int:
        """Bytes of one layer without its routed experts (attention, norms, shared experts or the dense FFN)."""
        return (self.total - self.experts - self.embedding - self.output) // self.layers

    @property
    def layer_experts(self) -> int:
        return self.experts // self.moe_layers if self.moe_layers else 0


def from_catalog(name: str, size_gb: float, arch: Mapping[str, Any]) -> Shape:
    """An estimate from the catalog's size and the architecture's parameter counts: experts and the rest are
    assumed to share the file's average bits per weight, except that quantizers keep attention, embeddings and
    shared experts at 5 bits or more (unsloth's dynamic quants keep them higher still)."""
    total = int(size_gb * GB)
    params = float(arch["params_b"]) * 1e9
    bits = total * 8 / params
    dense_bits = min(max(bits, 5.5), 16.0)
    expert_params = float(arch.get("expert_params_b", 0)) * 1e9
    rest = int((params - expert_params) * dense_bits / 8)
    experts = max(total - rest, 0) if expert_params else 0
    embed = int(float(arch["embedding_params_b"]) * 1e9 * dense_bits / 8)
    return Shape(
        name=name, total=total, experts=experts, embedding=embed, output=embed, layers=int(arch["layers"]),
        dense_layers=int(arch.get("dense_layers", 0)), kv_per_token=int(arch["kv_bytes_per_token"]),
        max_context=int(arch["max_context"]), active_experts=float(arch.get("active_experts", 1.0)),
        source="catalog estimate")


def shards(path: Path) -> list[Path]:
    """Every shard of a split GGUF given any of them (NAME-0000K-of-0000N.gguf), or the one file."""
    m = SHARD.match(path.name)
    if not m:
        return [path]
    found = [path.with_name(f"{m['stem']}-{k:05d}-of-{m['count']}.gguf") for k in range(1, int(m["count"]) + 1)]
    missing = [p.name for p in found if not p.is_file()]
    if missing:
        raise UserError(f"{path}: shard {missing[0]} of the set is missing; download the whole set first")
    return found


def from_gguf(path: Path) -> Shape:
    """The exact split, from the GGUF's header and tensor table (every shard's); no weight is read."""
    try:
        import gguf  # a large import (numpy), needed only here: the `plan` extra
    except ImportError:
        raise UserError("reading a .gguf needs the gguf package: pip install 'r1kit[plan]' (or plan by catalog name)") from None

    if not path.is_file():
        raise UserError(f"{shown(str(path))} is not a file: give a catalog name (builder models) or a .gguf path")
    total = experts = embedding = output = 0
    fields: dict[str, Any] = {}
    per_layer: dict[int, int] = {}
    expert_tensors: list[tuple[int, str, int]] = []
    try:
        for shard in shards(path):
            reader = gguf.GGUFReader(shard)
            for key, field in reader.fields.items():
                if field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
                    fields[key] = field.contents()
            for t in reader.tensors:
                size = int(t.n_bytes)
                total += size
                if m := EXPERT_TENSOR.match(t.name):
                    experts += size
                    expert_tensors.append((int(m[1]), f"{m[2]}_{m[3]}exps", size))
                elif (block := BLOCK_TENSOR.match(t.name)):
                    per_layer[int(block[1])] = per_layer.get(int(block[1]), 0) + size
                elif t.name.startswith("token_embd."):
                    embedding += size
                elif t.name.startswith("output."):
                    output += size
    except (ValueError, OSError, KeyError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None
    arch = fields.get("general.architecture")
    if not arch or f"{arch}.block_count" not in fields:
        raise UserError(f"{path}: the GGUF header names no architecture or layer count")

    def key(name: str, default: Any = None) -> Any:
        return fields.get(f"{arch}.{name}", default)

    layers = int(key("block_count"))
    if key("attention.kv_lora_rank"):  # MLA (DeepSeek): one latent vector and the rope part per token and layer
        kv_layer = (int(key("attention.kv_lora_rank")) + int(key("rope.dimension_count"))) * 2
    else:
        heads = int(key("attention.head_count"))
        kv_heads = int(key("attention.head_count_kv", heads))
        head_dim = int(key("attention.key_length", int(key("embedding_length")) // heads))
        kv_layer = 2 * kv_heads * head_dim * 2
    n_expert = int(key("expert_count", 0) or 0)
    return Shape(
        name=path.name, total=total, experts=experts, embedding=embedding, output=output, layers=layers,
        dense_layers=int(key("leading_dense_block_count", 0) or 0) if experts else 0, kv_per_token=kv_layer * layers,
        max_context=int(key("context_length", 4096)),
        active_experts=int(key("expert_used_count", 0) or 0) / n_expert if n_expert else 1.0, source="GGUF header",
        layer_bytes=tuple(per_layer.get(i, 0) for i in range(layers)), expert_tensors=tuple(sorted(expert_tensors)))
