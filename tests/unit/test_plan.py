"""`builder plan` against the machines of the recipes this project replaces (recorded descriptions, not this
machine), each with the plan it should produce and why; a real GGUF's header; bad input; `--write`."""

from __future__ import annotations

import json
import re

import pytest
from support.builder import builder_in_process as builder
from support.compose import compose
from support.prerequisites import REPO
from support.tiny_gguf import write_tiny_deepseek2

from builder.core.errors import UserError
from builder.models import catalog as models
from builder.models.catalog import ModelCatalog
from builder.models.shapes import from_gguf
from builder.plan import hardware
from builder.plan.planner import (
    choose,
    decode_estimate,
    plan_model,
    recommend,
    shape_for,
)


def layers_with_experts_in_ram(settings) -> set[int]:
    """The layers the plan's -ot pattern names (each keeps some or all of its routed-expert tensors in RAM)."""
    return {int(n) for group in re.findall(r"blk\\\.\(([\d|]+)\)", settings["LLAMACPP_OVERRIDE_TENSOR"]) for n in group.split("|")}


def machine(gpus: str, ram: float, cores: int, cpu: str, numa: int = 1, nodes: int = 1) -> hardware.Machine:
    return hardware.describe(gpus=gpus, ram_gib=ram, cores=cores, cpu=cpu, numa=numa, nodes=nodes)


@pytest.fixture(scope="module")
def catalog() -> ModelCatalog:
    return models.load()


def test_4x_a100_runs_q8_with_experts_in_ram_and_beats_the_recipes_ngl_20(catalog):
    """The recipe: R1 Q8_0, `-ngl 20 --tensor-split 24,25,25,25`, about 2 tokens/s. Q8_0 (713 GB) fits 320 GB of
    GPU plus 1 TB of RAM (R1-0528's, the same size, before the original's); every layer goes on the GPUs with the
    experts of the first layers in RAM, which reads far fewer bytes from RAM per token than 41 whole layers on the
    CPU."""
    box = machine("4xA100", 1000, 128, "avx2", numa=2)
    plan, passed = recommend(catalog, box, None, None)
    assert (plan.model, plan.engine) == ("r1-0528-q8_0", "llamacpp")
    s = plan.settings
    assert s["LLAMACPP_N_GPU_LAYERS"] == "all" and 0 < len(layers_with_experts_in_ram(s)) < 58
    split = [int(x) for x in s["LLAMACPP_TENSOR_SPLIT"].split(",")]
    assert len(split) == 4 and sum(split) == 61 + 1 and s["LLAMACPP_SPLIT_MODE"] == "layer"  # the output head counts too
    assert all(b <= 80 * hardware.GIB for b in plan.gpu_bytes)
    recipe = decode_estimate(plan.shape, box, 20, 0, (5, 5, 5, 5))
    assert plan.tokens_per_s > 1.5 * recipe


def test_4x_4090_with_ollama_offloads_at_least_the_recipes_28_layers(catalog):
    """The recipe found `num_gpu 28` (7 layers per 24 GB card) for the 1.58-bit quant by trial. Whole layers of
    about 2.1 GB each: at least 7 fit each card after the compute buffer and margin."""
    box = machine("4xRTX4090", 384, 64, "avx512")
    plan = plan_model("r1-671b-ud-iq1_s", shape_for(catalog.get("r1-671b-ud-iq1_s"), catalog.architectures), box, "ollama", None)
    assert 28 <= int(plan.settings["OLLAMA_NUM_GPU"]) < 61
    assert plan.settings["OLLAMA_CONTEXT_LENGTH"] == "8192"


def test_4x_4090_recommends_a_larger_quant_with_llamacpp_than_ollama_could_run_fast(catalog):
    box = machine("4xRTX4090", 384, 64, "avx512")
    plan, _ = recommend(catalog, box, None, None)
    assert plan.engine == "llamacpp" and plan.model == "r1-0528-q4_k_m"  # 404 GB: 96 GB of GPU + 345 GB of RAM to give
    assert plan.settings["LLAMACPP_THREADS"] == "64"


def test_3090ti_with_96gb_is_told_r1_does_not_fit_and_gets_the_32b_distill(catalog):
    """140 GB (the smallest R1) against 24 GB of GPU and 86 GB of RAM to give: a refusal that says so, and the
    recommendation falls to the largest distill that runs well, entirely on the GPU."""
    box = machine("1xRTX3090Ti", 96, 16, "avx2")
    with pytest.raises(UserError, match=r"r1-671b-ud-iq1_s does not fit: .*need about 14\d GB"):
        plan_model("r1-671b-ud-iq1_s", shape_for(catalog.get("r1-671b-ud-iq1_s"), catalog.architectures), box, "llamacpp", None)
    plan, passed = recommend(catalog, box, None, None)
    assert plan.model == "r1-distill-qwen-32b" and plan.expectation == "everything on the GPUs"
    assert any(p.startswith("r1-671b-ud-iq1_s") for p in passed)


def test_a6000_with_256gb_runs_r1_0528s_2_7_bit_quant(catalog):
    box = machine("1xA6000", 256, 32, "avx512")
    plan, _ = recommend(catalog, box, None, None)
    assert plan.model == "r1-0528-ud-q2_k_xl" and layers_with_experts_in_ram(plan.settings)


def test_amx_xeon_with_one_24gb_gpu_keeps_most_experts_in_ram(catalog):
    box = machine("1x24", 512, 32, "amx", numa=1)
    plan, _ = recommend(catalog, box, None, None)
    assert plan.model == "r1-0528-q4_k_m" and plan.engine == "llamacpp"
    assert len(layers_with_experts_in_ram(plan.settings)) > 52  # 24 GB holds the attention and few experts
    assert box.cpu_level == "amx" and {"avx512", "avx2"} <= box.cpu_flags


@pytest.mark.parametrize("gpus,nodes,tp,pp", [
    ("4xH100", 4, 4, 4),  # the recipe: 16 H100s in four servers
    ("4xH200", 2, 4, 2),  # 8 H200s in two servers reach the same
    ("1xGH200", 16, 1, 16),  # 16 single-GPU GH200 nodes (the recipe chose pipeline 4 x tensor 4; see docs)
    ("8xH200", 1, 8, 1),
])
def test_clusters_serve_the_fp8_weights_with_vllm(catalog, gpus, nodes, tp, pp):
    box = machine(gpus, 2000, 64, "avx512", nodes=nodes)
    plan, _ = recommend(catalog, box, None, None)
    assert (plan.model, plan.engine) == ("r1-0528-fp8", "vllm")
    assert plan.settings["VLLM_TENSOR_PARALLEL_SIZE"] == str(tp) and plan.settings["VLLM_PIPELINE_PARALLEL_SIZE"] == str(pp)
    assert plan.settings["VLLM_MODEL"] == "r1-0528-fp8" and plan.settings["VLLM_EXPERT_PARALLEL"] == "--enable-expert-parallel"


def test_one_8x_h100_node_cannot_hold_the_fp8_weights(catalog):
    box = machine("8xH100", 2000, 64, "avx512")
    with pytest.raises(UserError, match="does not fit vLLM on 8 GPUs"):
        plan_model("r1-671b-fp8", shape_for(catalog.get("r1-671b-fp8"), catalog.architectures), box, "vllm", None)
    plan, _ = recommend(catalog, box, None, None)
    assert plan.engine == "llamacpp"  # the quants still run, experts in RAM where they must


@pytest.mark.parametrize("gpus,ram,chosen,original", [
    ("none", 200, "r1-0528-ud-iq1_s", "r1-671b-ud-iq1_s"),  # CPU only
    ("2x24", 200, "r1-0528-ud-iq2_xxs", "r1-671b-ud-iq2_xxs"),
    ("1x24", 200, "r1-0528-ud-iq1_m", "r1-671b-ud-iq1_m"),
    ("1xA6000", 256, "r1-0528-ud-q2_k_xl", "r1-671b-ud-q2_k_xl"),
    ("4xRTX4090", 384, "r1-0528-q4_k_m", "r1-671b-q4_k_m"),
    ("8xH200", 2000, "r1-0528-fp8", "r1-671b-fp8"),
])
def test_r1_0528_before_r1_where_both_fit(catalog, gpus, ram, chosen, original):
    """DeepSeek's update before the original: the recommendation is R1-0528, the original R1's same quant fits the
    machine too and is passed over for it, never for being too large."""
    box = machine(gpus, ram, 32, "avx512")
    plan, passed = recommend(catalog, box, None, None)
    assert plan.model == chosen
    entry = catalog.get(original)
    assert plan_model(original, shape_for(entry, catalog.architectures), box, plan.engine, None)  # it fits as well
    assert original not in {p.split(" ")[0] for p in passed}


def test_the_original_r1_where_only_it_fits(catalog):
    """160 GiB of RAM and a 24 GB GPU hold R1's 1.73-bit quant (170 GB) but none of R1-0528's (185 GB and up):
    the original, after every 0528 quant was passed over as too large."""
    plan, passed = recommend(catalog, machine("1x24", 160, 32, "avx512"), None, None)
    assert plan.model == "r1-671b-ud-iq1_m"
    assert {p.split(" ")[0] for p in passed} >= {"r1-0528-ud-iq1_s", "r1-0528-ud-q2_k_xl", "r1-0528-fp8"}
    assert all("does not fit" in p for p in passed if p.startswith("r1-0528-"))


def test_builder_plan_without_a_model_names_r1_0528_and_the_stacks_default_stays_the_small_distill(tmp_path):
    """`builder plan` (no model) on a big machine writes R1-0528 into the stack's .env; the catalog's default, what
    the stacks run without a plan, stays the 1.5B distill that runs anywhere."""
    env = tmp_path / ".env"
    builder("plan", "--gpus", "4xRTX4090", "--ram", "384", "--cores", "64", "--cpu", "avx512", "--write", str(env), capture_output=True)
    assert "MODEL=r1-0528-q4_k_m\n" in env.read_text()
    assert models.load().default == "r1-distill-qwen-1.5b"
    resolved = json.loads(compose(["llamacpp-webui.yml"], "config", "--format", "json").stdout)
    assert resolved["services"]["llamacpp"]["environment"]["LLAMA_ARG_ALIAS"] == "r1-distill-qwen-1.5b"


def test_a_ggufs_header_gives_the_exact_split(tmp_path):
    """A real deepseek2 file: experts and KV cache per token from its tensor table and keys, computed here from
    the widths it was written with."""
    path = write_tiny_deepseek2(tmp_path / "ds2.gguf")  # 2 layers (1 dense), 256 wide, 8 experts of 256, f32
    shape = from_gguf(path)
    assert shape.experts == 1 * 3 * 8 * 256 * 256 * 4
    assert shape.kv_per_token == (64 + 32) * 2 * 2  # MLA: (kv_lora + rope) f16 values per layer
    assert (shape.layers, shape.dense_layers, shape.active_experts) == (2, 1, 2 / 8)


def test_cli_plans_a_gguf_and_writes_the_stack_env_keeping_other_lines(tmp_path):
    path = write_tiny_deepseek2(tmp_path / "ds2.gguf")
    env = tmp_path / ".env"
    env.write_text("# mine\nHF_TOKEN=hf_secret\nLLAMACPP_CTX_SIZE=4096\nLLAMACPP_N_CPU_MOE=30\n")
    result = builder("plan", str(path), "--gpus", "1x8", "--ram", "16", "--cores", "8", "--cpu", "avx2", "--ctx", "1024",
                     "--write", str(env), capture_output=True)
    text = env.read_text()
    assert text.startswith("# mine\nHF_TOKEN=hf_secret\nLLAMACPP_CTX_SIZE=1024\nLLAMACPP_N_CPU_MOE=\n")
    assert "LLAMACPP_N_GPU_LAYERS=all" in text and "MODEL=" not in text  # a file, not a catalog name
    assert "LLAMACPP_CTX_SIZE=1024 (was '4096')" in result.stderr
    again = builder("plan", str(path), "--gpus", "1x8", "--ram", "16", "--cores", "8", "--cpu", "avx2", "--ctx", "1024",
                    "--write", str(env), "--json", capture_output=True)
    assert json.loads(again.stdout)["settings"]["LLAMACPP_CTX_SIZE"] == "1024"
    assert "already up to date" in again.stderr and env.read_text() == text


@pytest.mark.parametrize("args,message", [
    (["--gpus", "fourx24"], "unknown GPU 'fourx24'"),
    (["--gpus", "4xRTX9999"], "unknown GPU 'RTX9999'"),
    (["--gpus", "0x24"], "a count of 0 GPUs"),
    (["--ram", "lots"], "'lots' is not a valid float"),
    (["--cpu", "sse9"], "unknown flag 'sse9'"),
    (["r1-671b-ud-iq1_s", "--ctx", "200000"], "is more than r1-671b-ud-iq1_s supports (163840 tokens)"),
    (["r1-671b-q8_0", "--gpus", "none", "--ram", "64"], "r1-671b-q8_0 does not fit"),
    (["no-such-model"], "unknown model 'no-such-model'"),
    (["r1-671b-q4_k_m", "--engine", "vllm"], "r1-671b-q4_k_m is not served by vllm"),
    (["missing.gguf"], "'missing.gguf' is not a file"),
    (["--engine", "foo"], "--engine 'foo': the planner knows llamacpp, ollama, vllm, ktransformers"),
    (["r1-671b-q4_k_m", "--engine", "foo"], "--engine 'foo': the planner knows"),
    (["--engine", "ktransformers", "--gpus", "none"], "ktransformers runs attention, the dense layers and the shared experts on an NVIDIA GPU"),
    (["--engine", "ktransformers", "--ram", "256"], "r1-0528-q4_k_m's routed experts (about 393 GB) stay in RAM"),
    (["--engine", "ktransformers", "--ram", "512", "--gpus", "1x16"], "need about 20 GiB per GPU"),
    (["--engine", "ktransformers", "--ram", "512", "--cpu", "baseline"], "kt-kernel's CPU kernels need AVX2 at least"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    env = tmp_path / ".env"
    described = ["--cores", "8", "--cpu", "avx2"] + ([] if "--ram" in args else ["--ram", "64"]) + ([] if "--gpus" in args else ["--gpus", "1x24"])
    result = builder("plan", *described, *args, "--write", str(env), check=False, capture_output=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not env.exists()


def test_plan_write_then_compose_reaches_llama_server(tmp_path):
    """The README's path for a user's own hardware: `builder plan --write` into the stack's .env, then compose. The
    plan's 4-GPU split reaches llama-server's environment as the plan printed it."""
    env = tmp_path / ".env"
    plan = json.loads(builder("plan", "r1-671b-ud-iq1_s", "--gpus", "4xRTX4090", "--ram", "384", "--cores", "64", "--cpu",
                              "avx512", "--write", str(env), "--json", capture_output=True).stdout)["settings"]
    resolved = json.loads(compose(["llamacpp-webui.yml"], "--env-file", str(env), "config", "--format", "json").stdout)
    server = resolved["services"]["llamacpp"]["environment"]
    assert server["LLAMA_ARG_N_GPU_LAYERS"] == plan["LLAMACPP_N_GPU_LAYERS"] == "all"
    assert server["LLAMA_ARG_OVERRIDE_TENSOR"] == plan["LLAMACPP_OVERRIDE_TENSOR"] != ""
    assert server["LLAMA_ARG_TENSOR_SPLIT"] == plan["LLAMACPP_TENSOR_SPLIT"] and len(plan["LLAMACPP_TENSOR_SPLIT"].split(",")) == 4
    assert server["LLAMA_ARG_SPLIT_MODE"] == "layer" and server["LLAMA_ARG_THREADS"] == "64"
    assert "r1-671b-ud-iq1_s" in resolved["services"]["model-init"]["command"]


def test_plan_write_then_compose_reaches_vllm(tmp_path):
    """The same path for R1's FP8 weights on one 8xH200 node: the vLLM stack's command takes the plan's sizes."""
    env = tmp_path / ".env"
    builder("plan", "r1-671b-fp8", "--gpus", "8xH200", "--ram", "2000", "--cores", "96", "--cpu", "amx", "--write", str(env), capture_output=True)
    command = json.loads(compose(["vllm-webui.yml"], "--env-file", str(env), "config", "--format", "json").stdout)["services"]["vllm"]["command"]
    assert command[0] == "/models/r1-671b-fp8"
    assert {"--tensor-parallel-size=8", "--pipeline-parallel-size=1", "--enable-expert-parallel", "--max-model-len=8192"} <= set(command), command


def llamacpp_devices(n_layer: int, ngl: int, split: list[int]) -> list[int | None]:
    """Where llama.cpp puts each block and then the output head (the last entry) for -ngl and --tensor-split: its
    own arithmetic (llama-model.cpp, load_tensors), float32 and upper_bound included. None is the CPU."""
    import bisect

    import numpy as np

    cumulative = np.cumsum(np.array(split, dtype=np.float32))
    points = list(cumulative / cumulative[-1])
    start = max(n_layer + 1 - ngl, 0)
    active = min(ngl, n_layer + 1)
    return [None if il < start or il - start >= active else bisect.bisect_right(points, np.float32(il - start) / np.float32(active))
            for il in range(n_layer + 1)]


@pytest.mark.parametrize("gpus,ram,model", [
    ("4xA100", 1000, "r1-671b-q8_0"),
    ("4xRTX4090", 384, "r1-671b-q4_k_m"),
    ("2x16", 250, "r1-671b-ud-iq1_s"),
    ("3x24", 512, "r1-671b-ud-q2_k_xl"),
    ("2x24", 64, "r1-distill-llama-70b"),  # a dense model split over two cards, the output head on the second
])
def test_llamacpp_puts_each_layer_where_the_plan_says(catalog, gpus, ram, model):
    """The tensor split the plan writes, read back through llama.cpp's own mapping, lands every block on the GPU
    the plan counted it on, and the output head on the last one. (The first multi-GPU run on the 2xH100 machine
    wrote the block counts alone; llama.cpp counts the head as one more layer, moved a block with its experts onto
    the first GPU, and that GPU ran out of memory.)"""
    box = machine(gpus, ram, 32, "avx512")
    plan = plan_model(model, shape_for(catalog.get(model), catalog.architectures), box, "llamacpp", None)
    n_layer = plan.shape.layers
    ngl = n_layer + 1 if plan.settings["LLAMACPP_N_GPU_LAYERS"] == "all" else int(plan.settings["LLAMACPP_N_GPU_LAYERS"])
    split = [int(x) for x in plan.settings["LLAMACPP_TENSOR_SPLIT"].split(",")]
    placed = llamacpp_devices(n_layer, ngl, split)
    blocks = placed[:n_layer]
    counts = [sum(1 for d in blocks if d == g) for g in range(len(split))]
    expected_blocks = [c - (1 if g == max(i for i, x in enumerate(split) if x) else 0) for g, c in enumerate(split)]
    assert counts == expected_blocks, (plan.settings, placed)
    assert placed[n_layer] == max(i for i, x in enumerate(split) if x)  # the output head on the last GPU


@pytest.mark.parametrize("engine,model,gpus,ram", [
    ("llamacpp", "r1-671b-ud-iq1_s", "4xRTX4090", 256),
    ("ollama", "r1-671b-ud-iq1_s", "4xRTX4090", 256),
    ("vllm", "r1-671b-fp8", "8xH200", 2000),
    ("ktransformers", "r1-0528-q4_k_m", "1xRTX4090", 512),
])
def test_every_setting_a_planner_writes_is_a_variable_of_its_engines_stack(catalog, engine, model, gpus, ram):
    """`builder plan --write` sets these in stacks/.env: one the stack does not read would be a silent no-op."""
    plan = plan_model(model, shape_for(catalog.get(model), catalog.architectures), machine(gpus, ram, 32, "avx512"), engine, None)
    stacks = REPO / "stacks"
    text = "".join(p.read_text() for p in (*stacks.glob(f"{engine}-*.yml"), stacks / "shared/services.yml"))
    unread = [key for key in plan.settings if not re.search(r"\$\{" + key + r"[:}-]", text)]
    assert plan.settings and not unread, f"{engine}'s planner writes {unread}, which no {engine} stack file reads"


KT_BOX = ("1xRTX4090", 512, 32, "avx512")  # kt-kernel's documented minimum class: one 24 GB GPU, a lot of RAM


def test_ktransformers_plans_r1_0528_with_its_own_experts_on_a_24gb_gpu_and_512gb_ram(catalog):
    """Asked for without a model, ktransformers gets R1-0528 (the release the stack defaults to): its FP8 folder for
    the GPU part and its Q4_K_M GGUF's experts in RAM (Q8_0's do not fit 512 GiB); every expert the GPU holds
    besides fits the 24 GiB at sglang's 0.9 share; the CPU settings are the machine's."""
    box = machine(*KT_BOX, numa=2)
    plan, _ = choose(catalog, box, None, "ktransformers", None)
    s = plan.settings
    assert (plan.engine, plan.model, s["KT_MODEL"], s["KT_EXPERTS"]) == ("ktransformers", "r1-0528-q4_k_m", "r1-0528-fp8", "r1-0528-q4_k_m")
    assert catalog.get(s["KT_MODEL"]).released == catalog.get(s["KT_EXPERTS"]).released
    assert (s["KT_METHOD"], s["KT_CPU_THREADS"], s["KT_NUMA_NODES"], s["KT_TP_SIZE"], s["KT_CTX_SIZE"]) == ("LLAMAFILE", "32", "2", "1", "8192")
    assert 1 <= int(s["KT_NUM_GPU_EXPERTS"]) < 8 and plan.gpu_bytes[0] <= 24 * hardware.GIB * 0.9
    assert 380e9 < plan.ram_bytes <= 512 * hardware.GIB * 0.9
    assert plan.flags[:2] == ("--kt-method", "LLAMAFILE") and "--kt-num-gpu-experts" in plan.flags
    assert any(r.startswith("KT_CPU_THREADS=32: the physical cores") for r in plan.reasons)
    assert any("cap_add: [SYS_NICE]" in r for r in plan.reasons)  # 2 NUMA nodes: the stack's binding needs it
    # One more GPU expert per layer would not fit: the count is the most the budget takes.
    more = plan_model("r1-0528-q4_k_m", shape_for(catalog.get("r1-0528-q4_k_m"), catalog.architectures), machine("1x26", 512, 32, "avx512"), "ktransformers", None)
    assert int(more.settings["KT_NUM_GPU_EXPERTS"]) > int(s["KT_NUM_GPU_EXPERTS"])


@pytest.mark.parametrize("named", ["r1-671b-q4_k_m", "r1-671b-fp8"])
def test_ktransformers_keeps_a_named_release_together(catalog, named):
    """Naming the original R1 (its GGUF or its FP8 folder) plans the original's pair, with nothing of 0528's."""
    plan, _ = choose(catalog, machine(*KT_BOX), named, "ktransformers", None)
    assert (plan.settings["KT_MODEL"], plan.settings["KT_EXPERTS"]) == ("r1-671b-fp8", "r1-671b-q4_k_m")
    assert "0528" not in json.dumps(plan.as_json())


def test_ktransformers_takes_q8_0_experts_where_ram_holds_them_and_splits_over_gpus(catalog):
    """1 TiB of RAM holds Q8_0's experts (713 GB); three H100s run tensor parallel over two (a power of two)."""
    plan, _ = choose(catalog, machine("3xH100", 1024, 64, "amx"), "r1-0528-fp8", "ktransformers", None)
    assert (plan.settings["KT_EXPERTS"], plan.settings["KT_TP_SIZE"]) == ("r1-0528-q8_0", "2")
    assert len(plan.gpu_bytes) == 2 and all(b <= 80 * hardware.GIB * 0.9 for b in plan.gpu_bytes)
    assert any("AMXINT4/AMXINT8" in r for r in plan.reasons) and any("1 GPU(s) left unused" in r for r in plan.reasons)


def test_the_recommendation_never_picks_ktransformers_unasked(catalog):
    """Where llama.cpp was the recommendation, it stays so: nothing measured here says ktransformers is faster."""
    for box in (machine(*KT_BOX), machine("3xH100", 1024, 64, "amx"), machine("1x24", 2048, 128, "amx", numa=2)):
        plan, _ = recommend(catalog, box, None, None)
        assert plan.engine != "ktransformers"
    plan, _ = choose(catalog, machine(*KT_BOX), "r1-0528-q4_k_m", None, None)
    assert plan.engine == "llamacpp"


def test_plan_write_then_compose_reaches_sglang_kt(tmp_path):
    """`builder plan --engine ktransformers --write` into the stack's .env, then compose: both model-init runs fetch
    the plan's pair, and the engine's command carries each planned value beside its flag."""
    env = tmp_path / ".env"
    plan = json.loads(builder("plan", "--engine", "ktransformers", "--gpus", "1xRTX4090", "--ram", "512", "--cores", "48", "--numa", "2",
                              "--cpu", "avx512", "--write", str(env), "--json", capture_output=True).stdout)["settings"]
    services = json.loads(compose(["ktransformers-webui.yml"], "--env-file", str(env), "config", "--format", "json").stdout)["services"]
    assert services["model-init-weights"]["command"][0] == plan["KT_MODEL"] == "r1-0528-fp8"
    assert services["model-init"]["command"][0] == plan["KT_EXPERTS"] == "r1-0528-q4_k_m"
    command = services["ktransformers"]["command"]
    for flag, key in (("--kt-method", "KT_METHOD"), ("--kt-cpuinfer", "KT_CPU_THREADS"), ("--kt-threadpool-count", "KT_NUMA_NODES"),
                      ("--kt-num-gpu-experts", "KT_NUM_GPU_EXPERTS"), ("--context-length", "KT_CTX_SIZE"), ("--tp-size", "KT_TP_SIZE")):
        assert command[command.index(flag) + 1] == plan[key], flag
    assert plan["KT_CPU_THREADS"] == "48" and plan["KT_NUMA_NODES"] == "2"
