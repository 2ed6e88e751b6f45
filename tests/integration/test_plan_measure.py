"""`builder plan --measure` for real on this machine's CPU: llama-bench through the llama.cpp image's entrypoint
(`docker run IMAGE llama-bench`) on a tiny deepseek2 model, with the plan's candidates and llama.cpp's own fit. The
GPU is described (`--gpus`) so that the plan keeps expert tensors in RAM by `-ot` patterns; the CPU build runs
them all on the CPU, which is what can be proven here: every flag the plan writes parses in the built binaries,
the choice is one of the measured candidates, and the cache beside the model answers the second time."""

from __future__ import annotations

import json
import re
import shlex

import pytest
from python_on_whales import DockerClient
from support.builder import builder_in_process as builder
from support.tiny_gguf import Deepseek2, write_tiny_deepseek2

from builder.images import runtime
from builder.plan.measure import cache_file

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# 12 routed experts of 512x256 (f32) per MoE layer: 3 expert tensors of 6 MiB per layer, 5 MoE layers. A 1.6 GiB
# "GPU" leaves the plan room (after the 1 GiB margin and the compute buffer) for some expert tensors, not all.
DIMS = Deepseek2(n_embd=256, n_layer=6, n_ff=512, n_ff_exp=512, n_expert=12, n_expert_used=2)
MACHINE = ["--gpus", "1x1.6", "--ram", "8", "--cores", "2", "--cpu", "avx2", "--numa", "1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("measure")
    folder.chmod(0o755)  # the image's user (uid 10001) reads it through the mount
    path = write_tiny_deepseek2(folder / "tiny-r1.gguf", DIMS)
    path.chmod(0o644)
    return path


def bench_command(image: str, model) -> str:
    return shlex.join(["docker", "run", "--rm", "-v", f"{model.parent}:{model.parent}:ro", image, "llama-bench"])


def test_measure_picks_a_measured_candidate_and_reuses_the_cache(llamacpp_cpu_image, model):
    plan = json.loads(builder("plan", str(model), *MACHINE, "--json", capture_output=True).stdout)
    assert plan["settings"]["LLAMACPP_OVERRIDE_TENSOR"].endswith("=CPU"), plan  # the tensor placement is under test

    first = builder("plan", str(model), *MACHINE, "--measure", "--llama-bench", bench_command(llamacpp_cpu_image, model),
                    "--json", capture_output=True)
    measured = json.loads(first.stdout)
    names = [r["name"] for r in measured["measured"]]
    assert names == ["plan", "plan -ub 2048", "llama.cpp fit"], names
    assert all(not r["error"] and r["tg128"] > 0 and r["pp512"] > 0 for r in measured["measured"]), measured["measured"]
    assert measured["chosen"] in names and not measured["cached"]
    chosen = next(r for r in measured["measured"] if r["name"] == measured["chosen"])
    assert chosen["tg128"] >= max(r["tg128"] - r["tg128_sd"] - chosen["tg128_sd"] for r in measured["measured"]) * 0.99
    assert cache_file(model).is_file() and "cached the measurement in" in first.stderr

    # The same model on the same hardware: answered from the file, no llama-bench run (`false` would fail).
    again = builder("plan", str(model), *MACHINE, "--measure", "--llama-bench", "false", "--json", capture_output=True)
    reused = json.loads(again.stdout)
    assert reused["cached"] and reused["chosen"] == measured["chosen"] and reused["settings"] == measured["settings"]
    assert "reused the measurement in" in again.stderr

    # Other hardware (a larger GPU): measured again, the cache keeps both.
    other = builder("plan", str(model), "--gpus", "1x2", *MACHINE[2:], "--measure", "--llama-bench", "false",
                    capture_output=True, check=False)
    assert other.returncode != 0 and "no candidate ran" in other.stderr


def test_the_plans_flags_exist_in_the_built_binaries(llamacpp_cpu_image):
    """Every flag runtime.yaml turns a setting into (llama-server) and every flag --measure hands llama-bench."""
    docker = DockerClient()
    server = docker.run(llamacpp_cpu_image, ["llama-server", "--help"], remove=True)
    bench = docker.run(llamacpp_cpu_image, ["llama-bench", "--help"], remove=True)
    def lists(help_text: str, flag: str) -> bool:  # the flag as --help lists it: first on a line or after a ','
        return re.search(rf"(^|[\s,]){re.escape(flag)}([\s,]|$)", help_text, re.MULTILINE) is not None

    for flag in (f for f in runtime.load("llamacpp").settings.values() if f):
        assert lists(server, flag), flag
    for flag in ("-ngl", "-ncmoe", "-ot", "-sm", "-ts", "-t", "-ub", "--numa", "-fitt", "-fa", "-r", "-o"):
        assert lists(bench, flag), flag


def test_llamacpp_keeps_exactly_the_planned_expert_tensors_in_ram(llamacpp_cpu_image, model):
    """The plan's -ot pattern through llama.cpp's own matcher: llama-bench -v names each tensor an override moved,
    and those are the expert tensors the plan keeps in RAM, no more."""
    from builder.models.shapes import from_gguf
    from builder.plan import hardware, planner

    box = hardware.describe(gpus="1x1.6", ram_gib=8, cores=2, cpu="avx2", numa=1)
    placed = planner.place(from_gguf(model), box, 1024)
    pattern = planner.override_pattern(placed.experts_in_ram)
    output = DockerClient().run(llamacpp_cpu_image, ["llama-bench", "-m", str(model), "-p", "8", "-n", "2", "-r", "1", "-v",
                                                     "-ot", pattern], volumes=[(str(model.parent), str(model.parent), "ro")],
                                remove=True, stream=True)
    log = b"".join(chunk for source, chunk in output if source == "stderr").decode(errors="replace")  # -v logs there
    moved = set(re.findall(r"tensor (blk\.\d+\.\w+)\.weight \(.*\) buffer type overridden to CPU", log))
    assert moved == {f"blk.{layer}.ffn_{kind}" for layer, kind in placed.experts_in_ram} and moved, log[-2000:]
